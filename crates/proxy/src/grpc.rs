//! What gRPC means to the proxy: an answer's `grpc-status` (in its head for a trailers-only answer, else
//! in its trailers) decides how the answer is counted in the per-release stats.
//!
//! It does not parse messages or frames; the bytes pass through untouched.

use hyper::header::{HeaderMap, HeaderName};

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The `grpc-status` of a head or trailers, if it has a readable one.
pub(crate) fn status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(&GRPC_STATUS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The HTTP status a gRPC status is counted as, after the mapping grpc-gateway uses: `OK` is a 200,
/// errors the caller made are 4xx, errors of the service are 5xx (what the analysis judges a release by).
pub(crate) fn counted_status(grpc_status: u32) -> u16 {
    match grpc_status {
        0 => 200,
        1 => 499,          // CANCELLED
        3 | 9 | 11 => 400, // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE
        4 => 504,          // DEADLINE_EXCEEDED
        5 => 404,          // NOT_FOUND
        6 | 10 => 409,     // ALREADY_EXISTS, ABORTED
        7 => 403,          // PERMISSION_DENIED
        8 => 429,          // RESOURCE_EXHAUSTED
        12 => 501,         // UNIMPLEMENTED
        14 => 503,         // UNAVAILABLE
        16 => 401,         // UNAUTHENTICATED
        _ => 500,          // UNKNOWN, INTERNAL, DATA_LOSS and codes not defined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ok_counts_as_a_success() {
        assert_eq!(counted_status(0), 200);
        for code in 1..=20 {
            assert!(counted_status(code) >= 400, "code {code}");
        }
        assert_eq!(counted_status(13), 500);
        assert_eq!(counted_status(14), 503);
        assert_eq!(counted_status(5), 404);
    }

    #[test]
    fn status_is_read_from_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(status(&headers), None);
        headers.insert("grpc-status", "13".parse().expect("value"));
        assert_eq!(status(&headers), Some(13));
    }
}
