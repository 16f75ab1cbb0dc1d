//! The encrypted form of a backup that leaves the host: a file sealed in 1 MiB chunks with the
//! agent's backup key (XChaCha20-Poly1305, STREAM-style nonces), the backup key itself sealed by
//! the master key in the header, so the master key alone opens any object on a fresh host.
//!
//! It does not talk to S3 and does not pick where files go: callers hand it paths.
//!
//! Layout: `MAGIC | version | u32 header length | header (JSON) | u32 sealed key length | sealed
//! backup key | 19-byte nonce prefix | chunks`. Chunk `i` is sealed with nonce `prefix || i (u32 BE)
//! || last (1 byte)` and the sha256 of everything before the chunks as associated data, so the
//! header cannot be altered, chunks cannot be reordered, dropped, or the file cut short.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore as _};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use zeroize::Zeroizing;

use crate::secrets::MasterKey;

/// The first bytes of every sealed backup.
pub const MAGIC: &[u8; 8] = b"RWBACKUP";
const VERSION: u8 = 1;
/// Plaintext bytes per chunk: memory stays bounded whatever the backup's size.
pub const CHUNK: usize = 1 << 20;
const TAG: usize = 16;
const PREFIX: usize = 19;
/// The purpose the backup key is sealed for (the master key's associated data).
const KEY_PURPOSE: &str = "backup-key";
/// Bounds on the header's parts, so a hostile object cannot make the agent allocate much.
const MAX_HEADER: u32 = 64 * 1024;

/// What a sealed backup says about itself (authenticated, not secret: no database password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub id: String,
    /// `sqlite`, `postgres`, or `agent-store` for the agent's own state.
    pub kind: String,
    pub app: String,
    pub environment: String,
    pub release: Option<u64>,
    pub reason: String,
    /// The database, without its password.
    pub target: String,
    /// Size and sha256 of the plaintext.
    pub size: u64,
    pub sha256: String,
    pub created_at: i64,
}

/// The agent's backup key, in memory only; stored sealed by the master key.
pub struct BackupKey {
    key: Zeroizing<[u8; 32]>,
    /// `key` as [`MasterKey::seal_blob`] sealed it.
    sealed: Vec<u8>,
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupKey(***)")
    }
}

impl BackupKey {
    /// A new random key, sealed by `master`.
    pub fn generate(master: &MasterKey) -> BackupKey {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut *key);
        let sealed = master.seal_blob(KEY_PURPOSE, &*key);
        BackupKey { key, sealed }
    }

    /// Opens a key sealed by `master`.
    pub fn open(master: &MasterKey, sealed: &[u8]) -> Result<BackupKey, SealError> {
        let plain = master
            .open_blob(KEY_PURPOSE, sealed)
            .map_err(|_| SealError::KeyDoesNotOpen)?;
        let key: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| SealError::KeyDoesNotOpen)?;
        Ok(BackupKey {
            key: Zeroizing::new(key),
            sealed: sealed.to_vec(),
        })
    }

    pub fn sealed(&self) -> &[u8] {
        &self.sealed
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.key).into())
    }
}

/// Why a backup could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` is not a sealed Rollway backup (no `RWBACKUP` header of version 1)", path.display())]
    NotSealed { path: PathBuf },
    #[error(
        "the backup key in the sealed backup does not open with this master key (another agent's master key?)"
    )]
    KeyDoesNotOpen,
    #[error("chunk {chunk} of `{}` does not open: the object was altered or cut short", path.display())]
    Chunk { path: PathBuf, chunk: u32 },
    #[error("`{}` opened, but its content's sha256 is not the one its header records", path.display())]
    Checksum { path: PathBuf },
    #[error("cannot encrypt chunk {chunk}")]
    Encrypt { chunk: u32 },
}

/// Seals the plaintext file `from` into `to`; returns the sealed file's (size, sha256).
pub fn seal_file(
    key: &BackupKey,
    header: &Header,
    from: &Path,
    to: &Path,
) -> Result<(u64, String), SealError> {
    let read_error = |source| SealError::Read {
        path: from.to_owned(),
        source,
    };
    let write_error = |source| SealError::Write {
        path: to.to_owned(),
        source,
    };
    let mut input = std::fs::File::open(from).map_err(read_error)?;
    let file = std::fs::File::create(to).map_err(write_error)?;
    let mut output = HashingWriter::new(std::io::BufWriter::new(file));
    let mut prefix = [0u8; PREFIX];
    OsRng.fill_bytes(&mut prefix);
    let json = serde_json::to_vec(header).unwrap_or_default();
    let preamble = preamble(&json, key.sealed(), &prefix);
    output.write_all(&preamble).map_err(write_error)?;
    let aad: [u8; 32] = sha2::Sha256::digest(&preamble).into();
    let cipher = key.cipher();
    let mut buffer = vec![0u8; CHUNK];
    let mut chunk: u32 = 0;
    loop {
        let n = read_full(&mut input, &mut buffer).map_err(read_error)?;
        // Only the last chunk is shorter than CHUNK (possibly empty).
        let last = n < CHUNK;
        let nonce = chunk_nonce(&prefix, chunk, last);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &buffer[..n],
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Encrypt { chunk })?;
        output.write_all(&sealed).map_err(write_error)?;
        if last {
            break;
        }
        chunk = chunk.checked_add(1).ok_or(SealError::Encrypt { chunk })?;
    }
    let (size, sha256, inner) = output.finish();
    let file = inner
        .into_inner()
        .map_err(|error| write_error(error.into_error()))?;
    file.sync_all().map_err(write_error)?;
    Ok((size, sha256))
}

/// Opens the sealed file `from` with the master key into `to`; checks the plaintext's sha256
/// against the header's and returns the header.
pub fn open_file(master: &MasterKey, from: &Path, to: &Path) -> Result<Header, SealError> {
    let read_error = |source| SealError::Read {
        path: from.to_owned(),
        source,
    };
    let write_error = |source| SealError::Write {
        path: to.to_owned(),
        source,
    };
    let mut input = std::io::BufReader::new(std::fs::File::open(from).map_err(read_error)?);
    let ((json, header), sealed_key, prefix) = read_preamble(&mut input, from)?;
    let key = BackupKey::open(master, &sealed_key)?;
    let aad: [u8; 32] = sha2::Sha256::digest(preamble(&json, &sealed_key, &prefix)).into();
    let cipher = key.cipher();
    let mut output = std::io::BufWriter::new(std::fs::File::create(to).map_err(write_error)?);
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; CHUNK + TAG];
    let mut chunk: u32 = 0;
    loop {
        let n = read_full(&mut input, &mut buffer).map_err(read_error)?;
        let last = n < CHUNK + TAG;
        let nonce = chunk_nonce(&prefix, chunk, last);
        let plain = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &buffer[..n],
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Chunk {
                path: from.to_owned(),
                chunk,
            })?;
        hasher.update(&plain);
        output.write_all(&plain).map_err(write_error)?;
        if last {
            break;
        }
        chunk = chunk.checked_add(1).ok_or_else(|| SealError::Chunk {
            path: from.to_owned(),
            chunk,
        })?;
    }
    output.flush().map_err(write_error)?;
    if hex::encode(hasher.finalize()) != header.sha256 {
        return Err(SealError::Checksum {
            path: from.to_owned(),
        });
    }
    Ok(header)
}

/// The header of a sealed file, without opening its chunks (listing the remote's backups).
pub fn read_header(path: &Path) -> Result<Header, SealError> {
    let file = std::fs::File::open(path).map_err(|source| SealError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut input = std::io::BufReader::new(file);
    read_preamble(&mut input, path).map(|(header, _, _)| header.1)
}

/// Everything before the chunks, as written (the chunks' associated data is its sha256).
fn preamble(json: &[u8], sealed_key: &[u8], prefix: &[u8; PREFIX]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 9 + json.len() + sealed_key.len() + PREFIX);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json);
    out.extend_from_slice(&(sealed_key.len() as u32).to_be_bytes());
    out.extend_from_slice(sealed_key);
    out.extend_from_slice(prefix);
    out
}

/// ((header bytes, header), sealed key, nonce prefix).
type Preamble = ((Vec<u8>, Header), Vec<u8>, [u8; PREFIX]);

fn read_preamble(input: &mut impl Read, path: &Path) -> Result<Preamble, SealError> {
    let not_sealed = || SealError::NotSealed {
        path: path.to_owned(),
    };
    let mut magic = [0u8; 9];
    input.read_exact(&mut magic).map_err(|_| not_sealed())?;
    if &magic[..8] != MAGIC || magic[8] != VERSION {
        return Err(not_sealed());
    }
    let read_part = |input: &mut dyn Read| -> Result<Vec<u8>, SealError> {
        let mut len = [0u8; 4];
        input.read_exact(&mut len).map_err(|_| not_sealed())?;
        let len = u32::from_be_bytes(len);
        if len > MAX_HEADER {
            return Err(not_sealed());
        }
        let mut part = vec![0u8; len as usize];
        input.read_exact(&mut part).map_err(|_| not_sealed())?;
        Ok(part)
    };
    let json = read_part(input)?;
    let header: Header = serde_json::from_slice(&json).map_err(|_| not_sealed())?;
    let sealed_key = read_part(input)?;
    let mut prefix = [0u8; PREFIX];
    input.read_exact(&mut prefix).map_err(|_| not_sealed())?;
    Ok(((json, header), sealed_key, prefix))
}

fn chunk_nonce(prefix: &[u8; PREFIX], chunk: u32, last: bool) -> XNonce {
    let mut nonce = [0u8; 24];
    nonce[..PREFIX].copy_from_slice(prefix);
    nonce[PREFIX..PREFIX + 4].copy_from_slice(&chunk.to_be_bytes());
    nonce[23] = u8::from(last);
    nonce.into()
}

/// Reads until `buffer` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Counts and hashes what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: sha2::Sha256::new(),
            size: 0,
        }
    }

    fn finish(self) -> (u64, String, W) {
        (self.size, hex::encode(self.hasher.finalize()), self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests;
