//! Backups above the part size go to the remote as S3 multipart uploads (issue 21: one PUT takes
//! at most 5 GiB), against a real S3-compatible server (`s3s-fs` on loopback) with the part size
//! lowered to 1 MiB: the object on the remote is the sealed file byte for byte, and it opens back
//! into the plaintext byte for byte.
//!
//! Outside `scripts/test` (no `s3s-fs`) the test skips with one printed line.

use std::path::Path;

use agent::backup::remote::Remote;
use agent::backup::sealed::{self, BackupKey, Header};
use agent::secrets::{MasterKey, Secret};
use testkit::s3::S3Server;

const BUCKET: &str = "rollway-multipart";
const MIB: u64 = 1024 * 1024;
/// The smallest part S3 (and `s3s-fs`) accepts, but the last.
const PART: u64 = 5 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_above_the_part_size_goes_up_in_parts_and_restores_byte_for_byte() {
    let (access_key, secret_key) = ("AKMULTIPART", "sk-multipart-canary");
    let Some(s3) = S3Server::start(access_key, secret_key, &[BUCKET]).await else {
        return;
    };
    let config = manifest::BackupRemote {
        bucket: BUCKET.to_owned(),
        prefix: "db".to_owned(),
        endpoint: s3.endpoint(),
        region: "us-east-1".to_owned(),
        access_key_id: "S3_ACCESS_KEY_ID".to_owned(),
        secret_access_key: "S3_SECRET_ACCESS_KEY".to_owned(),
    };
    let remote = Remote::with_credentials(
        &config,
        &Secret::new(access_key.to_owned()),
        &Secret::new(secret_key.to_owned()),
    )
    .expect("the remote");
    let small_parts = remote.clone().with_part_size(MIB);
    let remote = remote.with_part_size(PART);
    let dir = tempfile::tempdir().expect("tempdir");

    // A few MiB of backup that do not compress and do not end on a part boundary.
    let plain_path = dir.path().join("b-1-aa.sqlite");
    let plain = pseudo_random(2 * PART as usize + MIB as usize / 2 + 123);
    std::fs::write(&plain_path, &plain).expect("write the backup");
    let master = MasterKey::generate();
    let (size, sha256) = agent::backup::file_digest(&plain_path).expect("digest");
    let header = Header {
        id: "b-1-aa".to_owned(),
        kind: "sqlite".to_owned(),
        app: "shop".to_owned(),
        environment: "production".to_owned(),
        release: Some(1),
        reason: "manual".to_owned(),
        target: "/srv/shop.db".to_owned(),
        size,
        sha256,
        created_at: 1,
    };
    let sealed_path = dir.path().join("b-1-aa.sqlite.sealed");
    let (sealed_size, _) = sealed::seal_file(
        &BackupKey::generate(&master),
        &header,
        &plain_path,
        &sealed_path,
    )
    .expect("seal");
    assert!(
        sealed_size > 2 * PART,
        "{sealed_size} bytes: not three parts"
    );

    let key = remote.key("shop/production/b-1-aa.sqlite.sealed");
    // Parts the remote refuses (under 5 MiB): the upload fails naming why, and is aborted; no
    // object appears under the key.
    let refused = small_parts
        .put_file(&key, &sealed_path)
        .await
        .expect_err("parts under 5 MiB");
    let refused = agent::report::chain(&refused);
    assert!(
        refused.contains("EntityTooSmall") && refused.contains(&key),
        "{refused}"
    );
    assert!(!refused.contains(secret_key) && !refused.contains(access_key));
    let folder = remote.folder("shop", "production");
    assert_eq!(remote.list(&folder).await.expect("list"), Vec::new());

    remote
        .put_file(&key, &sealed_path)
        .await
        .expect("the multipart upload");
    // The parts were joined in order into one object, the sealed file byte for byte.
    let stored = std::fs::read(s3.root().join(BUCKET).join(&key)).expect("the stored object");
    assert!(
        stored == std::fs::read(&sealed_path).expect("sealed"),
        "the stored object differs from the sealed file"
    );
    let listed = remote.list(&folder).await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|object| (object.key.as_str(), object.size))
            .collect::<Vec<_>>(),
        vec![(key.as_str(), sealed_size)]
    );

    // Fetched back and opened: the backup, byte for byte.
    let fetched = dir.path().join("fetched.sealed");
    remote.get_file(&key, &fetched).await.expect("download");
    let opened = dir.path().join("opened.sqlite");
    let opened_header = sealed::open_file(&master, &fetched, &opened).expect("open");
    assert_eq!(opened_header, header);
    assert!(
        std::fs::read(&opened).expect("opened") == plain,
        "the restored backup differs from the one taken"
    );

    // An object of exactly one part goes up in one PUT, and comes back too.
    let small = dir.path().join("small");
    std::fs::write(&small, pseudo_random(PART as usize)).expect("write");
    let small_key = remote.key("shop/production/small");
    remote.put_file(&small_key, &small).await.expect("one PUT");
    assert_same_file(&s3.root().join(BUCKET).join(&small_key), &small);
}

fn assert_same_file(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).expect("a") == std::fs::read(b).expect("b"),
        "`{}` differs from `{}`",
        a.display(),
        b.display()
    );
}

/// Bytes that do not compress (xorshift), the same on every run.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
