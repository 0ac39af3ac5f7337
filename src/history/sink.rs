//! Where checkpoints go besides the store.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use super::checkpoint::Checkpoint;
use crate::{ConfigError, Error, ErrorKind};

/// The future a [`CheckpointSink`] answers.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// Keeps a copy of every checkpoint outside the history store.
///
/// A checkpoint kept only beside the history it attests can be cut with
/// it; a copy where the store's operators cannot rewrite it is what lets
/// [`CheckpointLog`](super::CheckpointLog) show that histories were cut.
/// The writer hands each checkpoint over once, in counter order, and
/// retries (with backoff) until `publish` answers `Ok` or the writer's
/// shutdown deadline passes; later checkpoints wait, and the heads they
/// cover are merged into one. It is handed only checkpoints the history
/// store has kept (when the store keeps checkpoints), so one the sink has
/// and the store lacks was removed. A sink should
/// therefore answer `Ok` only once the copy is durable, and answer quickly.
///
/// Two sinks come with the crate: [`TracingSink`] (a `tracing` event with
/// the header, for a log pipeline that ships elsewhere) and [`FileSink`]
/// (an append-only JSON-lines file). Others are a few lines: an object
/// store with object lock (S3, GCS retention policies), a transparency
/// log, another database under other credentials.
///
/// ```
/// use session_trail::history::{Checkpoint, CheckpointSink, SinkFuture};
/// use std::sync::Mutex;
///
/// /// Keeps headers in memory (a stand-in for a remote append-only log).
/// #[derive(Default)]
/// struct Headers(Mutex<Vec<Checkpoint>>);
///
/// impl CheckpointSink for Headers {
///     fn publish<'a>(&'a self, checkpoint: &'a Checkpoint) -> SinkFuture<'a> {
///         Box::pin(async move {
///             self.0.lock().unwrap().push(checkpoint.header());
///             Ok(())
///         })
///     }
/// }
/// let sink = Headers::default();
/// # let _ = &sink;
/// ```
pub trait CheckpointSink: Send + Sync + 'static {
    /// Keeps a copy of `checkpoint`.
    ///
    /// # Errors
    ///
    /// When the copy could not be made; the writer retries.
    fn publish<'a>(&'a self, checkpoint: &'a Checkpoint) -> SinkFuture<'a>;
}

/// Logs each checkpoint's header as an `info` event with target
/// `session_trail::checkpoint`: `writer`, `counter`, `leaves`, `root` and
/// `digest` (hex) for people, and `checkpoint`, the header as one line of
/// JSON ([`Checkpoint::to_json`] without the heads), which
/// [`Checkpoint::from_json`] reads back as an outside copy for
/// [`CheckpointLog::new`](super::CheckpointLog::new): against it, a
/// checkpoint removed or altered in the store is reported. The heads are
/// not logged (a checkpoint may cover 100,000 sessions): with these roots
/// an auditor checks one session with an
/// [`InclusionProof`](super::InclusionProof) from the store's copy.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingSink;

impl CheckpointSink for TracingSink {
    fn publish<'a>(&'a self, cp: &'a Checkpoint) -> SinkFuture<'a> {
        tracing::info!(
            target: "session_trail::checkpoint",
            writer = %cp.writer,
            counter = cp.counter,
            leaves = cp.leaves,
            root = %crate::util::hex(&cp.root),
            digest = %crate::util::hex(&cp.digest()),
            checkpoint = %cp.header().to_json(),
            "history checkpoint"
        );
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Appends each checkpoint as one line of JSON
/// ([`Checkpoint::to_json`], heads included) to a file opened for
/// appending only, and syncs it to disk before answering.
///
/// Each line holds about 100 bytes per session advanced in its interval.
/// Ship the file where it cannot be rewritten (a WORM volume, a log
/// shipper to another host); [`FileSink::read`] reads it back for
/// [`CheckpointLog::new`](super::CheckpointLog::new).
#[derive(Clone, Debug)]
pub struct FileSink {
    path: PathBuf,
    /// The file, and whether a write failed part-way (the next line then
    /// starts on a line of its own).
    file: Arc<Mutex<(File, bool)>>,
}

impl FileSink {
    /// Opens (or creates) the file for appending. A file whose last line
    /// was cut short (a crash while it was written) gets the next line on
    /// a line of its own; so does a file this process may append to but
    /// not read (a write-only audit file), to be safe.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `checkpoint_sink` when the file cannot be
    /// opened for appending.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref().to_path_buf();
        let failed = |e: std::io::Error| {
            ConfigError::new(
                "checkpoint_sink",
                format!(
                    "cannot open the checkpoint file {} for appending: {e}",
                    path.display()
                ),
            )
        };
        let readable = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path);
        let (file, torn) = match readable {
            Ok(mut file) => {
                let torn = match file.metadata().map_err(failed)?.len() {
                    0 => false,
                    len => {
                        let mut last = [0u8; 1];
                        file.seek(SeekFrom::Start(len - 1)).map_err(failed)?;
                        file.read_exact(&mut last).map_err(failed)?;
                        last[0] != b'\n'
                    }
                };
                (file, torn)
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(failed)?;
                (file, true)
            }
            Err(e) => return Err(failed(e)),
        };
        Ok(Self {
            path,
            file: Arc::new(Mutex::new((file, torn))),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the checkpoints of a file written by a `FileSink`. A line that
    /// is the beginning of one, cut short (by a crash or a failed write),
    /// is passed over with a warning, and so is an empty line or a last
    /// line without its newline yet.
    ///
    /// # Errors
    ///
    /// When the file cannot be read, or a line is not a checkpoint nor the
    /// beginning of one (the error names the line): two lines run together,
    /// text that is not a checkpoint's JSON.
    pub fn read(path: impl AsRef<Path>) -> Result<Vec<Checkpoint>, Error> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| {
            Error::with_source(ErrorKind::Unavailable, e)
                .context(format!("reading the checkpoint file {}", path.display()))
        })?;
        let mut out = Vec::new();
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        for n in 1.. {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::with_source(ErrorKind::Unavailable, e))?;
            if read == 0 || line.last() != Some(&b'\n') {
                break;
            }
            let parsed = match serde_json::from_slice::<serde_json::Value>(&line[..line.len() - 1])
            {
                Err(e) if !e.is_eof() => Err(e.to_string()),
                Err(e) => {
                    tracing::warn!(
                        file = %path.display(),
                        line = n,
                        error = %e,
                        "passing over a checkpoint line cut short (a crash while it was written?)"
                    );
                    continue;
                }
                Ok(v) => Checkpoint::from_json(&v).map_err(|e| e.to_string()),
            };
            match parsed {
                Ok(cp) => out.push(cp),
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!("{} line {n}: {e}", path.display()),
                    ));
                }
            }
        }
        Ok(out)
    }
}

impl CheckpointSink for FileSink {
    fn publish<'a>(&'a self, cp: &'a Checkpoint) -> SinkFuture<'a> {
        let mut line = cp.to_json().to_string().into_bytes();
        line.push(b'\n');
        let file = Arc::clone(&self.file);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = file.lock().unwrap_or_else(|p| p.into_inner());
                let (f, torn) = &mut *guard;
                if *torn {
                    line.insert(0, b'\n');
                }
                let written = f.write_all(&line).and_then(|()| f.sync_data());
                *torn = written.is_err();
                written
            })
            .await
            .map_err(|e| Error::new(ErrorKind::Unavailable, e.to_string()))?
            .map_err(|e| {
                Error::with_source(ErrorKind::Unavailable, e).context("writing a checkpoint")
            })
        })
    }
}
