//! Errors keep their cause on the way to the API's answer.

use super::*;

#[test]
fn a_full_disk_is_507_and_says_so() {
    let error = ApiError::from(ArtifactError::Io {
        operation: "write",
        path: "/state/artifacts/sha256/.x.tmp".into(),
        source: std::io::Error::from_raw_os_error(28),
    });
    assert_eq!(error.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(error.code, "insufficient_storage");
    assert_eq!(
        error.message,
        "cannot write `/state/artifacts/sha256/.x.tmp`: No space left on device (os error 28)"
    );
}

#[test]
fn an_internal_error_answers_with_its_cause() {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot record a deployment")]
    struct Store {
        #[source]
        source: std::io::Error,
    }
    let error = ApiError::internal(Store {
        source: std::io::Error::other("database or disk is full"),
    });
    assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        error.message,
        "internal error: cannot record a deployment: database or disk is full"
    );
}

#[test]
fn a_kind_has_one_status_and_a_status_one_kind() {
    for status in [
        400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 500, 503, 507, 418, 502,
    ] {
        let status = StatusCode::from_u16(status).expect("status");
        let kind = Kind::of_status(status);
        assert_eq!(kind.status(), status, "{kind:?}");
        assert_eq!(
            ApiError::of_status(status, "x").code,
            code_for(status),
            "{status}"
        );
    }
    assert_eq!(
        Kind::of_status(StatusCode::IM_A_TEAPOT),
        Kind::Other(StatusCode::IM_A_TEAPOT)
    );
}
