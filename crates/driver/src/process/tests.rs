//! Unit tests of the driver's own checks (the processes themselves are covered in `tests/it`).

use super::*;

#[test]
fn instance_ids_are_single_plain_path_components() {
    for valid in ["logistix-production-r3-web-1", "a", "app_1.web"] {
        assert!(validate_instance_id(valid).is_ok(), "{valid}");
    }
    for invalid in ["", ".", "..", ".hidden", "a/b", "../escape", "a b", "é"] {
        assert!(
            matches!(
                validate_instance_id(invalid),
                Err(DriverError::InvalidInstanceId(_))
            ),
            "{invalid}"
        );
    }
}

#[test]
fn default_config_matches_the_documented_values() {
    let config = ProcessDriverConfig::default();
    assert_eq!(config.log_limit_bytes, 10 * 1024 * 1024);
    assert_eq!(config.backoff_initial, Duration::from_millis(100));
    assert_eq!(config.backoff_max, Duration::from_secs(30));
    assert_eq!(config.backoff_reset_after, Duration::from_secs(60));
}

#[tokio::test]
async fn unknown_instances() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let driver = ProcessDriver::new(dir.path().join("state")).expect("driver");
    assert_eq!(driver.status("nothing"), InstanceStatus::Unknown);
    assert!(driver.running().is_empty());
    assert!(matches!(
        driver.logs("nothing", 5),
        Err(DriverError::UnknownInstance(_))
    ));
    driver
        .stop("nothing")
        .await
        .expect("stopping nothing is fine");
    assert!(
        !driver
            .adopt(InstanceSpec {
                instance_id: "nothing".into(),
                workdir: dir.path().into(),
                command: "true".into(),
                env: Vec::new(),
                port: 1,
                stop_timeout: Duration::from_secs(1),
                image: None,
                confinement: crate::Confinement::default(),
                cluster: None,
            })
            .await
            .expect("adopt")
    );
}
