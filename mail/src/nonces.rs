//! The replay cache: the nonces of accepted commands, each kept until its
//! command expires, so that a replayed copy is refused.
//!
//! [`NonceCache::new`] keeps them in memory only, which a restart forgets.
//! [`NonceCache::open`] also keeps them in a *nonce file*, so that a
//! restarted agent still refuses a command it has already acted on.
//!
//! # The nonce file
//!
//! Plain text, one line per event: `<nonce> <expiry>\n`, the expiry in
//! whole Unix seconds. A later line for the same nonce replaces an earlier
//! one; expiry `0` records a [`NonceCache::forget`]. Each line is appended
//! and `fdatasync`ed before [`NonceCache::remember`] returns `Ok`, so a
//! command is handed over only once its nonce is on disk.
//!
//! [`NonceCache::open`] loads the file, drops what has expired and
//! rewrites it (a temporary copy, `fsync`, `rename`, `fsync` of the
//! folder), as does a `remember` once the file holds more than twice as
//! many lines as live nonces. A last line without its line end is a write
//! cut short by a crash; its `remember` never returned, so the line is
//! dropped with a warning. Any other bad line fails the load
//! ([`NonceFileError::Corrupt`]): skipping it could forget a nonce and let
//! a replay through, so an operator decides.
//!
//! When a write fails, the nonce is not remembered and the error says so
//! ([`CommandError::NonceNotRecorded`]); the next write then rewrites the
//! whole file from memory, which also repairs a torn line or a deleted
//! file. One process should use a file at a time.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use crate::command::MAX_NONCE_HEX;
use crate::error::{CommandError, NonceFileError};

/// A file is rewritten when it holds at least this many lines and more
/// than twice as many as there are live nonces.
const COMPACT_MIN_LINES: usize = 1024;

/// Nonces of accepted commands, each kept until its command expires, so a
/// replayed copy is refused. Bounded: when full of unexpired nonces it
/// refuses new commands ([`CommandError::ReplayCacheFull`]) rather than
/// forget one early. The time is always an argument. Not `Clone`: two
/// copies of a durable cache would write one file.
#[derive(Debug)]
pub struct NonceCache {
    seen: HashMap<String, SystemTime>,
    capacity: usize,
    journal: Option<Journal>,
}

impl NonceCache {
    /// The capacity [`NonceCache::default`] uses.
    pub const DEFAULT_CAPACITY: usize = 16_384;

    /// An empty cache in memory only, holding at most `capacity`
    /// unexpired nonces.
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashMap::new(),
            capacity,
            journal: None,
        }
    }

    /// A cache backed by the nonce file at `path` (created if missing):
    /// loads the nonces still unexpired at `now` and rewrites the file
    /// without the rest. Blocking file I/O; call it at start-up.
    ///
    /// More unexpired nonces than `capacity` are all kept (dropping one
    /// would allow its replay); new commands are then refused until
    /// enough expire.
    pub fn open(
        path: impl AsRef<Path>,
        capacity: usize,
        now: SystemTime,
    ) -> Result<Self, NonceFileError> {
        let path = path.as_ref().to_path_buf();
        if path.file_name().is_none() {
            return Err(NonceFileError::Io {
                path,
                during: "use the path",
                source: io::Error::new(io::ErrorKind::InvalidInput, "it names no file"),
            });
        }
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(NonceFileError::Io {
                    path,
                    during: "read",
                    source,
                });
            }
        };
        let parsed = parse_file(&bytes).map_err(|(line, reason)| NonceFileError::Corrupt {
            path: path.clone(),
            line,
            reason,
        })?;
        if parsed.torn_line {
            warn!(
                path = %path.display(),
                "The nonce file ends in a cut-off line (a write interrupted by a crash, never \
                 confirmed); dropping it."
            );
        }
        let mut seen: HashMap<String, SystemTime> = parsed.entries.into_iter().collect();
        let known = seen.len();
        seen.retain(|_, expires| *expires > now);
        if seen.len() > capacity {
            warn!(
                path = %path.display(),
                nonces = seen.len(),
                capacity,
                "The nonce file holds more unexpired nonces than the cache's capacity; new \
                 commands are refused until enough expire."
            );
        }
        let mut journal = Journal {
            path,
            lines: 0,
            compact_after: COMPACT_MIN_LINES,
        };
        journal
            .rewrite(&seen)
            .map_err(|(during, source)| NonceFileError::Io {
                path: journal.path.clone(),
                during,
                source,
            })?;
        info!(
            path = %journal.path.display(),
            nonces = seen.len(),
            expired = known - seen.len(),
            "Nonce file loaded."
        );
        Ok(Self {
            seen,
            capacity,
            journal: Some(journal),
        })
    }

    /// Records `nonce` until `expires`, or fails if it is already there.
    /// Expired entries are dropped first. With a nonce file, returns `Ok`
    /// only once the nonce is on disk; if it cannot be written the nonce
    /// is not remembered and [`CommandError::NonceNotRecorded`] names the
    /// file.
    pub fn remember(
        &mut self,
        nonce: &str,
        expires: SystemTime,
        now: SystemTime,
    ) -> Result<(), CommandError> {
        check_nonce_text(nonce).map_err(|reason| CommandError::Malformed {
            field: "Nonce",
            reason: reason.to_owned(),
        })?;
        self.seen.retain(|_, exp| *exp > now);
        if self.seen.contains_key(nonce) {
            return Err(CommandError::Replayed {
                nonce: nonce.to_owned(),
            });
        }
        if self.seen.len() >= self.capacity {
            return Err(CommandError::ReplayCacheFull {
                capacity: self.capacity,
            });
        }
        self.seen.insert(nonce.to_owned(), expires);
        if let Some(journal) = &mut self.journal {
            let line = format!("{nonce} {}\n", unix_secs_ceil(expires));
            if let Err(reason) = journal.record(&line, &self.seen) {
                self.seen.remove(nonce);
                return Err(CommandError::NonceNotRecorded {
                    path: journal.path.clone(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// Forgets a nonce whose command was not acted on after all, so the
    /// same mail can be accepted again later. It is forgotten in memory in
    /// any case; the error says the nonce file could not be updated, so
    /// after a restart before the next successful write the mail would be
    /// refused as a replay.
    pub fn forget(&mut self, nonce: &str) -> Result<(), CommandError> {
        if self.seen.remove(nonce).is_none() {
            return Ok(());
        }
        if let Some(journal) = &mut self.journal {
            journal
                .record(&format!("{nonce} 0\n"), &self.seen)
                .map_err(|reason| CommandError::NonceNotRecorded {
                    path: journal.path.clone(),
                    reason,
                })?;
        }
        Ok(())
    }

    /// How many nonces are held (expired ones included until the next
    /// [`NonceCache::remember`]).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no nonce is held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The nonce file, if the cache has one.
    pub fn path(&self) -> Option<&Path> {
        self.journal.as_ref().map(|j| j.path.as_path())
    }
}

impl Default for NonceCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

/// Nonces can be any visible ASCII here (the verifier checks the stricter
/// command-mail grammar first); what matters is that a line stays a line.
fn check_nonce_text(nonce: &str) -> Result<(), &'static str> {
    if nonce.is_empty()
        || nonce.len() > MAX_NONCE_HEX
        || !nonce.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err("must be 1 to 128 visible ASCII characters");
    }
    Ok(())
}

/// Whole Unix seconds, rounded up so an entry never expires early; `0`
/// for instants before 1970 (already expired).
fn unix_secs_ceil(t: SystemTime) -> u64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0)),
        Err(_) => 0,
    }
}

/// The lines of a nonce file, in order.
#[derive(Debug, PartialEq, Eq)]
struct ParsedFile {
    entries: Vec<(String, SystemTime)>,
    /// The file ended in a line without its LF, which was skipped.
    torn_line: bool,
}

/// Parses a nonce file's bytes; `Err((line number, reason))` for a bad
/// complete line.
fn parse_file(bytes: &[u8]) -> Result<ParsedFile, (usize, String)> {
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // After the last LF comes an empty piece, or the cut-off line.
    let torn_line = lines.pop().is_some_and(|rest| !rest.is_empty());
    let entries = lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| parse_line(line).map_err(|reason| (i + 1, reason.to_owned())))
        .collect::<Result<_, _>>()?;
    Ok(ParsedFile { entries, torn_line })
}

fn parse_line(line: &[u8]) -> Result<(String, SystemTime), &'static str> {
    let line = std::str::from_utf8(line).map_err(|_| "not UTF-8")?;
    let (nonce, expiry) = line.split_once(' ').ok_or("expected `<nonce> <expiry>`")?;
    check_nonce_text(nonce).map_err(|_| "the nonce must be 1 to 128 visible ASCII characters")?;
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the expiry must be Unix seconds, digits only");
    }
    let secs: u64 = expiry
        .parse()
        .map_err(|_| "the expiry does not fit in 64 bits")?;
    let expires = UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or("the expiry is out of range")?;
    Ok((nonce.to_owned(), expires))
}

/// The nonce file's writer.
#[derive(Debug)]
struct Journal {
    path: PathBuf,
    /// Lines in the file now. `usize::MAX` after a failed write: the file
    /// may end in a partial line, so the next write rewrites it whole.
    lines: usize,
    /// See [`COMPACT_MIN_LINES`]; a field so tests can lower it.
    compact_after: usize,
}

impl Journal {
    /// Appends `line` (already applied to `live`), or rewrites the file
    /// from `live` when it is due for compaction, after a failed write,
    /// or when the append fails. `Err` is a reason for the log.
    fn record(&mut self, line: &str, live: &HashMap<String, SystemTime>) -> Result<(), String> {
        let due = self.lines >= self.compact_after && self.lines / 2 > live.len();
        if !due {
            match self.append(line) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    warn!(
                        path = %self.path.display(),
                        error = %e,
                        "Cannot append to the nonce file; rewriting it whole."
                    );
                }
            }
        }
        self.rewrite(live)
            .map_err(|(during, e)| format!("cannot {during}: {e}"))
    }

    /// Appends and syncs one line. The file is not created: if it has
    /// gone, a rewrite brings it back whole rather than with one line.
    fn append(&mut self, line: &str) -> io::Result<()> {
        let mut file = OpenOptions::new().append(true).open(&self.path)?;
        let before = self.lines;
        // If this fails, part of the line may be in the file.
        self.lines = usize::MAX;
        file.write_all(line.as_bytes())?;
        file.sync_data()?;
        self.lines = before.saturating_add(1);
        Ok(())
    }

    /// Writes `live` to a temporary file, syncs it, renames it over the
    /// nonce file and syncs the folder, so the file is always either the
    /// old one or the new one.
    fn rewrite(
        &mut self,
        live: &HashMap<String, SystemTime>,
    ) -> Result<(), (&'static str, io::Error)> {
        self.lines = usize::MAX;
        let mut entries: Vec<(u64, &str)> = live
            .iter()
            .map(|(nonce, exp)| (unix_secs_ceil(*exp), nonce.as_str()))
            .collect();
        entries.sort_unstable();
        let mut text = String::with_capacity(entries.len() * 48);
        for (secs, nonce) in &entries {
            text.push_str(nonce);
            text.push(' ');
            text.push_str(&secs.to_string());
            text.push('\n');
        }
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        let tmp = self.path.with_file_name(name);
        let written = write_synced(&tmp, text.as_bytes()).and_then(|()| {
            fs::rename(&tmp, &self.path).map_err(|e| ("rename the compacted copy into place", e))
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_folder(&self.path).map_err(|e| ("sync its folder", e))?;
        self.lines = entries.len();
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), (&'static str, io::Error)> {
    let mut file = File::create(path).map_err(|e| ("create the compacted copy", e))?;
    file.write_all(bytes)
        .map_err(|e| ("write the compacted copy", e))?;
    file.sync_all().map_err(|e| ("sync the compacted copy", e))
}

/// Makes a rename in `path`'s folder durable.
fn sync_folder(path: &Path) -> io::Result<()> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(folder)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const N1: &str = "00112233445566778899aabbccddeeff";
    const N2: &str = "ffeeddccbbaa99887766554433221100";

    #[test]
    fn nonce_cache_is_bounded_and_expires_entries() {
        let mut cache = NonceCache::new(2);
        assert!(cache.remember("a", at(10), at(0)).is_ok());
        assert!(cache.remember("b", at(20), at(0)).is_ok());
        assert_eq!(
            cache.remember("c", at(20), at(5)),
            Err(CommandError::ReplayCacheFull { capacity: 2 })
        );
        // "a" expires at 10: from then on it no longer counts.
        assert!(cache.remember("c", at(20), at(10)).is_ok());
        assert!(cache.remember("a", at(30), at(21)).is_ok());
        assert_eq!(cache.len(), 1);
        assert!(matches!(
            cache.remember("a b", at(30), at(21)),
            Err(CommandError::Malformed { field: "Nonce", .. })
        ));
    }

    #[test]
    fn a_remembered_nonce_is_a_replay_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonces");
        let mut cache = NonceCache::open(&path, 8, at(100)).unwrap();
        assert_eq!(cache.path(), Some(path.as_path()));
        cache.remember(N1, at(1000), at(100)).unwrap();
        drop(cache);
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{N1} 1000\n"));

        let mut cache = NonceCache::open(&path, 8, at(200)).unwrap();
        assert_eq!(
            cache.remember(N1, at(1000), at(200)),
            Err(CommandError::Replayed { nonce: N1.into() })
        );
        assert!(cache.remember(N2, at(900), at(200)).is_ok());
        // Expiry rounds up, never down.
        assert_eq!(unix_secs_ceil(at(5) + Duration::from_millis(1)), 6);
    }

    #[test]
    fn open_drops_expired_entries_and_compacts_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonces");
        // N1 expired at 50; N2 remembered, forgotten (0), remembered again.
        let text = format!("{N1} 50\n{N2} 500\n{N2} 0\n{N2} 600\nabc 10\n");
        fs::write(&path, text).unwrap();
        let mut cache = NonceCache::open(&path, 8, at(100)).unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{N2} 600\n"));
        assert!(cache.remember(N1, at(700), at(100)).is_ok());
        assert!(matches!(
            cache.remember(N2, at(700), at(100)),
            Err(CommandError::Replayed { .. })
        ));
        // After N2's expiry it may come again.
        assert!(cache.remember(N2, at(700), at(600)).is_ok());
        assert!(!dir.path().join("nonces.tmp").exists());
    }

    #[test]
    fn a_forgotten_nonce_is_accepted_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonces");
        let mut cache = NonceCache::open(&path, 8, at(100)).unwrap();
        cache.remember(N1, at(1000), at(100)).unwrap();
        cache.forget(N1).unwrap();
        cache.forget("never-seen").unwrap();
        drop(cache);
        let mut cache = NonceCache::open(&path, 8, at(100)).unwrap();
        assert!(cache.is_empty());
        assert!(cache.remember(N1, at(1000), at(100)).is_ok());
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_corrupt_line_fails_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonces");
        fs::write(&path, format!("{N1} 1000\n{N2} 10")).unwrap();
        let cache = NonceCache::open(&path, 8, at(100)).unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{N1} 1000\n"));

        let cases = [
            (format!("{N1} 1000\n\n"), 2, "expected"),
            (format!("{N1}\n"), 1, "expected"),
            (format!("{N1} 1000\n{N2} soon\n"), 2, "digits"),
            (format!("{N1} -5\n"), 1, "digits"),
            (format!("{N1} 99999999999999999999999\n"), 1, "64 bits"),
            (format!("{N1} 1000 extra\n"), 1, "digits"),
            ("\u{e9}t\u{e9} 1000\n".to_owned(), 1, "visible ASCII"),
        ];
        for (text, line, reason) in cases {
            fs::write(&path, &text).unwrap();
            match NonceCache::open(&path, 8, at(100)) {
                Err(e @ NonceFileError::Corrupt { line: l, .. }) => {
                    assert_eq!(l, line, "{text:?}");
                    let shown = e.to_string();
                    assert!(shown.contains(reason), "{text:?}: {shown}");
                    assert!(shown.contains(&path.display().to_string()), "{shown}");
                }
                other => panic!("{text:?}: expected Corrupt, got {other:?}"),
            }
            // A corrupt file is left as it was, for the operator.
            assert_eq!(fs::read_to_string(&path).unwrap(), text);
        }
        fs::write(&path, b"\xff\xfe 10\n").unwrap();
        assert!(matches!(
            NonceCache::open(&path, 8, at(100)),
            Err(NonceFileError::Corrupt { line: 1, .. })
        ));
        assert!(matches!(
            NonceCache::open(dir.path().join(".."), 8, at(100)),
            Err(NonceFileError::Io { .. })
        ));
    }

    #[test]
    fn a_failed_write_is_reported_and_the_nonce_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonces");
        let mut cache = NonceCache::open(&path, 8, at(100)).unwrap();
        cache.remember(N1, at(1000), at(100)).unwrap();
        // Even root cannot append to, or rename a file over, a folder.
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        let err = cache.remember(N2, at(1000), at(100)).unwrap_err();
        match &err {
            CommandError::NonceNotRecorded { path: p, .. } => assert_eq!(p, &path),
            other => panic!("expected NonceNotRecorded, got {other:?}"),
        }
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(cache.len(), 1);
        assert!(!dir.path().join("nonces.tmp").exists());
        assert!(cache.forget(N1).is_err());
        // The folder is removed: the next write repairs the file from memory.
        fs::remove_dir(&path).unwrap();
        cache.remember(N2, at(1000), at(100)).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{N2} 1000\n"));
    }

    #[test]
    fn a_grown_file_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonces");
        let mut cache = NonceCache::open(&path, 8, at(0)).unwrap();
        if let Some(j) = cache.journal.as_mut() {
            j.compact_after = 4;
        }
        for i in 0..5u64 {
            // Each nonce expires before the next is remembered.
            cache
                .remember(&format!("{i:032x}"), at(10 * i + 5), at(10 * i))
                .unwrap();
        }
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(text, format!("{:032x} 45\n", 4));
    }
}
