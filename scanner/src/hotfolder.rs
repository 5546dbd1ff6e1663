//! The hot folder: a file dropped into a folder becomes a document.
//!
//! An actor ([`HotFolderHandle`] plus a private `HotFolderActor`) polls the
//! folder. A file is picked up only once it is *settled*: its size and
//! modification time have not changed for the whole settle interval (the
//! folder may be a network share where no change notification exists, and
//! a slow writer pauses between chunks). Names that writers use while
//! writing are never picked up: dotfiles, `*.part`, `*.tmp`, `*.partial`,
//! `*.crdownload`, `*.swp` and `*~`; a writer that renames into place
//! when done is the safest, and the settle interval covers the rest.
//!
//! A settled file is read by the [`FileLoader`] and the document is sent
//! on the output channel; only then is the file moved to `done/`. A file
//! that cannot be read is moved to `failed/` with `NAME.reason.txt` next to
//! it saying why. Names already taken in `done/` or `failed/` get a `-N`
//! suffix, so nothing is overwritten.
//!
//! The output channel is bounded: when the consumer is slow the actor
//! waits, and files stay in the folder until it can take them. Shutdown is
//! through the [`CancellationToken`]: the actor stops at its next await,
//! which is always a safe point (a file is moved only after its document
//! was handed over, so at worst a file is read again on the next start).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::document::{Document, Origin};
use crate::error::ScanError;
use crate::files::{FileLoader, file_name};

/// How the hot folder works.
#[derive(Clone, Debug, PartialEq)]
pub struct HotFolderConfig {
    /// The folder to watch. It must exist.
    pub dir: PathBuf,
    /// Where finished files go (default `DIR/done`; created if missing).
    pub done_dir: Option<PathBuf>,
    /// Where unreadable files go (default `DIR/failed`; created if missing).
    pub failed_dir: Option<PathBuf>,
    /// How long size and modification time must stay unchanged before a
    /// file counts as completely written.
    pub settle: Duration,
    /// How often the folder is listed.
    pub poll_interval: Duration,
    /// How files are read and converted.
    pub loader: FileLoader,
}

impl HotFolderConfig {
    /// Defaults for `dir`: settle 2 s, poll every 500 ms.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        HotFolderConfig {
            dir: dir.into(),
            done_dir: None,
            failed_dir: None,
            settle: Duration::from_secs(2),
            poll_interval: Duration::from_millis(500),
            loader: FileLoader::default(),
        }
    }

    /// The `done/` folder in effect.
    pub fn done_dir(&self) -> PathBuf {
        self.done_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("done"))
    }

    /// The `failed/` folder in effect.
    pub fn failed_dir(&self) -> PathBuf {
        self.failed_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("failed"))
    }
}

/// Counters for the panel and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotFolderStatus {
    /// Files seen and waiting to settle.
    pub waiting: usize,
    /// Files turned into documents and moved to `done/`.
    pub done: u64,
    /// Files moved to `failed/`.
    pub failed: u64,
}

/// Messages to the hot folder actor.
#[derive(Debug)]
enum HotFolderMsg {
    Status {
        reply: oneshot::Sender<HotFolderStatus>,
    },
    Rescan {
        reply: oneshot::Sender<HotFolderStatus>,
    },
}

/// The handle of a running hot folder. Cloneable; the actor runs until
/// its cancellation token is cancelled or the output channel closes.
#[derive(Clone, Debug)]
pub struct HotFolderHandle {
    tx: mpsc::Sender<HotFolderMsg>,
}

impl HotFolderHandle {
    /// Checks the folders, creates `done/` and `failed/`, and spawns the
    /// actor on `tracker`. Documents go to `out`.
    pub async fn spawn(
        config: HotFolderConfig,
        out: mpsc::Sender<Document>,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Self, ScanError> {
        if config.settle.is_zero() || config.poll_interval.is_zero() {
            return Err(ScanError::InvalidOptions {
                reason: "hot folder settle and poll intervals must be above zero".into(),
            });
        }
        let meta = tokio::fs::metadata(&config.dir)
            .await
            .map_err(|e| ScanError::io(&config.dir, "opening the hot folder", e))?;
        if !meta.is_dir() {
            return Err(ScanError::InvalidOptions {
                reason: format!("hot folder {} is not a folder", config.dir.display()),
            });
        }
        let (done, failed) = (config.done_dir(), config.failed_dir());
        for d in [&done, &failed] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| ScanError::io(d, "creating", e))?;
        }
        let (tx, rx) = mpsc::channel(8);
        let span = info_span!("hotfolder", dir = %config.dir.display());
        let actor = HotFolderActor {
            config,
            done,
            failed,
            rx,
            out,
            cancel,
            settler: Settler::default(),
            stuck: HashSet::new(),
            status: HotFolderStatus::default(),
        };
        tracker.spawn(actor.run().instrument(span));
        Ok(HotFolderHandle { tx })
    }

    /// The counters.
    pub async fn status(&self) -> Result<HotFolderStatus, ScanError> {
        self.ask(|reply| HotFolderMsg::Status { reply }).await
    }

    /// Lists the folder now instead of at the next tick, and returns the
    /// counters after that pass.
    pub async fn rescan(&self) -> Result<HotFolderStatus, ScanError> {
        self.ask(|reply| HotFolderMsg::Rescan { reply }).await
    }

    async fn ask(
        &self,
        msg: impl FnOnce(oneshot::Sender<HotFolderStatus>) -> HotFolderMsg,
    ) -> Result<HotFolderStatus, ScanError> {
        let gone = || ScanError::ActorStopped {
            actor: "hot folder",
        };
        let (reply, rx) = oneshot::channel();
        self.tx.send(msg(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

/// The actor: owns the folder state and the receiver.
struct HotFolderActor {
    config: HotFolderConfig,
    done: PathBuf,
    failed: PathBuf,
    rx: mpsc::Receiver<HotFolderMsg>,
    out: mpsc::Sender<Document>,
    cancel: CancellationToken,
    settler: Settler<OsString>,
    /// Files that could be moved neither to done/ nor failed/: skipped
    /// while they stay, so that they are not read again and again.
    stuck: HashSet<OsString>,
    status: HotFolderStatus,
}

/// What a pass over the folder asks of the loop.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl HotFolderActor {
    async fn run(mut self) {
        info!(
            settle_ms = self.config.settle.as_millis() as u64,
            "Hot folder started."
        );
        let mut tick = tokio::time::interval(self.config.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut handles_open = true;
        loop {
            let flow = tokio::select! {
                _ = self.cancel.cancelled() => Flow::Stop,
                msg = self.rx.recv(), if handles_open => match msg {
                    None => {
                        handles_open = false;
                        Flow::Continue
                    }
                    Some(HotFolderMsg::Status { reply }) => {
                        let _ = reply.send(self.status);
                        Flow::Continue
                    }
                    Some(HotFolderMsg::Rescan { reply }) => {
                        let flow = self.poll().await;
                        let _ = reply.send(self.status);
                        flow
                    }
                },
                _ = tick.tick() => self.poll().await,
            };
            if flow == Flow::Stop {
                break;
            }
        }
        info!(
            done = self.status.done,
            failed = self.status.failed,
            "Hot folder stopped."
        );
    }

    /// One pass: list, update the settle state, process settled files.
    async fn poll(&mut self) -> Flow {
        let listing = match self.list().await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "Cannot list the hot folder; trying again at the next tick.");
                return Flow::Continue;
            }
        };
        self.stuck.retain(|n| listing.iter().any(|(l, ..)| l == n));
        let listing: Vec<_> = listing
            .into_iter()
            .filter(|(n, ..)| !self.stuck.contains(n))
            .collect();
        let ready = self
            .settler
            .observe(&listing, Instant::now(), self.config.settle);
        self.status.waiting = self.settler.len();
        for name in ready {
            if self.process(&name).await == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// The eligible regular files: (name, size, mtime).
    async fn list(&self) -> std::io::Result<Vec<(OsString, u64, Option<SystemTime>)>> {
        let mut rd = tokio::fs::read_dir(&self.config.dir).await?;
        let mut out = Vec::new();
        while let Some(entry) = rd.next_entry().await? {
            let name = entry.file_name();
            if !eligible(&name) {
                continue;
            }
            // Follows symlinks; a file removed meanwhile is just skipped.
            let Ok(meta) = tokio::fs::metadata(entry.path()).await else {
                continue;
            };
            if meta.is_file() {
                out.push((name, meta.len(), meta.modified().ok()));
            }
        }
        Ok(out)
    }

    /// Reads one settled file, hands the document over, moves the file.
    async fn process(&mut self, name: &OsStr) -> Flow {
        let path = self.config.dir.join(name);
        let file = file_name(&path);
        debug!(%file, "Hot folder file settled; reading it.");
        let origin = Origin::HotFolder(path.clone());
        let result = tokio::select! {
            _ = self.cancel.cancelled() => return Flow::Stop,
            r = self.config.loader.load_as(&path, origin) => r,
        };
        match result {
            Ok(doc) => {
                let pages = doc.pages.len();
                let dropped = doc.dropped_blank.len();
                tokio::select! {
                    _ = self.cancel.cancelled() => return Flow::Stop,
                    sent = self.out.send(doc) => if sent.is_err() {
                        warn!(%file, "The document consumer has gone; the hot folder stops and leaves the file.");
                        return Flow::Stop;
                    },
                }
                match move_unique(&path, &self.done).await {
                    Ok(dest) => {
                        self.status.done += 1;
                        info!(%file, pages, dropped_blank = dropped, dest = %dest.display(), "Hot folder document queued.");
                    }
                    Err(e) => {
                        self.stuck.insert(name.to_os_string());
                        error!(%file, error = %e, "Document queued but the file cannot be moved to done/; it is left in place and skipped.");
                    }
                }
            }
            Err(reason) => {
                self.status.failed += 1;
                match move_unique(&path, &self.failed).await {
                    Ok(dest) => {
                        let mut reason_path = dest.clone().into_os_string();
                        reason_path.push(".reason.txt");
                        let text = format!("{reason}\n");
                        if let Err(e) = tokio::fs::write(&reason_path, text).await {
                            error!(%file, error = %e, "Cannot write the reason file.");
                        }
                        warn!(%file, error = %reason, dest = %dest.display(), "Hot folder file cannot be read; moved to failed/.");
                    }
                    Err(e) => {
                        self.stuck.insert(name.to_os_string());
                        error!(%file, error = %reason, move_error = %e, "Hot folder file cannot be read nor moved to failed/; it is left in place and skipped.");
                    }
                }
            }
        }
        Flow::Continue
    }
}

/// Whether a name can be a finished document (not a writer's temporary).
pub fn eligible(name: &OsStr) -> bool {
    let name = name.to_string_lossy().to_ascii_lowercase();
    const TEMP_SUFFIXES: [&str; 6] = [".part", ".tmp", ".partial", ".crdownload", ".swp", "~"];
    !name.is_empty() && !name.starts_with('.') && !TEMP_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Tracks files until their size and modification time have stayed the
/// same for the settle interval. Pure: the caller supplies the listing and
/// the time.
#[derive(Debug)]
pub(crate) struct Settler<K> {
    seen: HashMap<K, Seen>,
}

impl<K> Default for Settler<K> {
    fn default() -> Self {
        Settler {
            seen: HashMap::new(),
        }
    }
}

#[derive(Debug)]
struct Seen {
    size: u64,
    mtime: Option<SystemTime>,
    since: Instant,
}

impl<K: Hash + Eq + Clone> Settler<K> {
    /// Takes a listing at `now`; returns the names that have settled (and
    /// forgets them). Names no longer listed are forgotten too.
    pub(crate) fn observe(
        &mut self,
        listing: &[(K, u64, Option<SystemTime>)],
        now: Instant,
        settle: Duration,
    ) -> Vec<K> {
        let listed: HashSet<&K> = listing.iter().map(|(k, ..)| k).collect();
        self.seen.retain(|k, _| listed.contains(k));
        let mut ready = Vec::new();
        for (name, size, mtime) in listing {
            match self.seen.get_mut(name) {
                Some(s) if s.size == *size && s.mtime == *mtime => {
                    if now.duration_since(s.since) >= settle {
                        ready.push(name.clone());
                    }
                }
                Some(s) => {
                    *s = Seen {
                        size: *size,
                        mtime: *mtime,
                        since: now,
                    };
                }
                None => {
                    self.seen.insert(
                        name.clone(),
                        Seen {
                            size: *size,
                            mtime: *mtime,
                            since: now,
                        },
                    );
                }
            }
        }
        for name in &ready {
            self.seen.remove(name);
        }
        ready
    }

    /// How many files are waiting to settle.
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}

/// A free name for `file` in `dir`: `NAME`, else `STEM-1.EXT`, `STEM-2.EXT`...
fn unique_name(file: &Path, taken: impl Fn(&OsStr) -> bool) -> Option<OsString> {
    let name = file.file_name()?.to_os_string();
    if !taken(&name) {
        return Some(name);
    }
    let stem = file.file_stem()?.to_os_string();
    let ext = file.extension();
    (1..10_000).find_map(|i| {
        let mut n = stem.clone();
        n.push(format!("-{i}"));
        if let Some(ext) = ext {
            n.push(".");
            n.push(ext);
        }
        (!taken(&n)).then_some(n)
    })
}

/// Moves `src` into `dir` under a free name; returns the new path.
async fn move_unique(src: &Path, dir: &Path) -> Result<PathBuf, ScanError> {
    let name = unique_name(src, |n| dir.join(n).exists()).ok_or_else(|| ScanError::Io {
        path: dir.to_path_buf(),
        action: "finding a free name",
        source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free name"),
    })?;
    let dest = dir.join(name);
    match tokio::fs::rename(src, &dest).await {
        Ok(()) => Ok(dest),
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            tokio::fs::copy(src, &dest)
                .await
                .map_err(|e| ScanError::io(src, "copying across file systems", e))?;
            tokio::fs::remove_file(src)
                .await
                .map_err(|e| ScanError::io(src, "removing after copy", e))?;
            Ok(dest)
        }
        Err(e) => Err(ScanError::io(src, "moving", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_not_eligible() {
        for n in [
            ".hidden.pdf",
            "a.part",
            "a.PDF.tmp",
            "x.partial",
            "x~",
            "y.crdownload",
        ] {
            assert!(!eligible(OsStr::new(n)), "{n}");
        }
        for n in ["scan.pdf", "fax.TIF", "page 1.png", "part.pdf"] {
            assert!(eligible(OsStr::new(n)), "{n}");
        }
    }

    #[test]
    fn a_file_settles_only_after_an_unchanged_interval() {
        let settle = Duration::from_secs(2);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_millis(s);
        let m1 = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100));
        let m2 = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(101));
        let mut s = Settler::default();
        // Growing: never ready.
        assert!(s.observe(&[("a", 10, m1)], at(0), settle).is_empty());
        assert!(s.observe(&[("a", 20, m1)], at(1500), settle).is_empty());
        assert!(s.observe(&[("a", 30, m2)], at(3000), settle).is_empty());
        // Same size but a new mtime restarts the clock.
        assert!(s.observe(&[("a", 30, m1)], at(4000), settle).is_empty());
        assert!(s.observe(&[("a", 30, m1)], at(5900), settle).is_empty());
        assert_eq!(s.len(), 1);
        // Unchanged for 2 s: ready once, then forgotten.
        assert_eq!(s.observe(&[("a", 30, m1)], at(6000), settle), vec!["a"]);
        assert_eq!(s.len(), 0);
        // A file that disappears is forgotten.
        assert!(s.observe(&[("b", 1, m1)], at(7000), settle).is_empty());
        assert!(s.observe(&[], at(8000), settle).is_empty());
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn names_in_done_are_never_overwritten() {
        let taken = ["scan.pdf", "scan-1.pdf", "notes"];
        let f = |n: &OsStr| taken.iter().any(|t| OsStr::new(t) == n);
        assert_eq!(
            unique_name(Path::new("/in/scan.pdf"), f).unwrap(),
            "scan-2.pdf"
        );
        assert_eq!(unique_name(Path::new("/in/notes"), f).unwrap(), "notes-1");
        assert_eq!(unique_name(Path::new("/in/new.png"), f).unwrap(), "new.png");
    }
}
