use super::*;

fn header(sha256: String, size: u64) -> Header {
    Header {
        id: "b-1-abcd".to_owned(),
        kind: "sqlite".to_owned(),
        app: "shop".to_owned(),
        environment: "production".to_owned(),
        release: Some(3),
        reason: "manual".to_owned(),
        target: "sqlite:/data/shop.db".to_owned(),
        size,
        sha256,
        created_at: 1,
    }
}

/// Seals `plain`, returns (dir, sealed path, header).
fn sealed(master: &MasterKey, plain: &[u8]) -> (tempfile::TempDir, PathBuf, Header) {
    let dir = tempfile::tempdir().expect("temp dir");
    let from = dir.path().join("plain");
    std::fs::write(&from, plain).expect("write");
    let header = header(hex::encode(sha2::Sha256::digest(plain)), plain.len() as u64);
    let key = BackupKey::generate(master);
    let to = dir.path().join("sealed");
    let (size, sha256) = seal_file(&key, &header, &from, &to).expect("seal");
    let bytes = std::fs::read(&to).expect("read sealed");
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(sha256, hex::encode(sha2::Sha256::digest(&bytes)));
    (dir, to, header)
}

#[test]
fn round_trips_at_every_chunk_boundary_and_hides_the_plaintext() {
    let master = MasterKey::generate();
    let canary = b"canary-row-7d1f";
    for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 5] {
        let mut plain: Vec<u8> = canary.iter().copied().cycle().take(len).collect();
        plain.truncate(len);
        let (dir, path, header) = sealed(&master, &plain);
        let bytes = std::fs::read(&path).expect("read");
        if len >= canary.len() {
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary),
                "len {len}"
            );
        }
        let out = dir.path().join("out");
        let opened = open_file(&master, &path, &out).expect("open");
        assert_eq!(opened, header);
        assert_eq!(std::fs::read(&out).expect("read out"), plain, "len {len}");
        assert_eq!(read_header(&path).expect("header"), header);
    }
}

#[test]
fn altered_cut_or_foreign_objects_do_not_open() {
    let master = MasterKey::generate();
    let plain: Vec<u8> = (0..(CHUNK * 2 + 100)).map(|i| (i % 251) as u8).collect();
    let (dir, path, _) = sealed(&master, &plain);
    let bytes = std::fs::read(&path).expect("read");
    let out = dir.path().join("out");
    let try_open = |bytes: &[u8]| {
        let altered = dir.path().join("altered");
        std::fs::write(&altered, bytes).expect("write");
        open_file(&master, &altered, &out)
    };
    // A flipped byte in the last chunk, in the first chunk, in the header.
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    assert!(matches!(
        try_open(&flipped),
        Err(SealError::Chunk { chunk: 2, .. })
    ));
    let mut flipped = bytes.clone();
    flipped[bytes.len() - 2 * CHUNK] ^= 0x80;
    assert!(matches!(try_open(&flipped), Err(SealError::Chunk { .. })));
    let text = String::from_utf8_lossy(&bytes[..200]).into_owned();
    let at = text.find("production").expect("env in header");
    let mut flipped = bytes.clone();
    flipped[at] = b'P';
    assert!(matches!(
        try_open(&flipped),
        Err(SealError::Chunk { chunk: 0, .. })
    ));
    // Cut at a chunk boundary: the last full chunk is not marked last.
    let cut = &bytes[..bytes.len() - (100 + TAG)];
    assert!(matches!(try_open(cut), Err(SealError::Chunk { .. })));
    // Not a sealed backup at all; another agent's master key.
    assert!(matches!(
        try_open(b"SQLite format 3\0"),
        Err(SealError::NotSealed { .. })
    ));
    assert!(matches!(
        open_file(&MasterKey::generate(), &path, &out),
        Err(SealError::KeyDoesNotOpen)
    ));
}

#[test]
fn a_backup_key_opens_with_its_master_key_only() {
    let master = MasterKey::generate();
    let key = BackupKey::generate(&master);
    let again = BackupKey::open(&master, key.sealed()).expect("open");
    assert_eq!(*again.key, *key.key);
    assert!(BackupKey::open(&MasterKey::generate(), key.sealed()).is_err());
    assert_eq!(format!("{key:?}"), "BackupKey(***)");
}
