//! The hot folder on a real folder: a slowly written file, a bad file,
//! temporary names, documents confirmed, refused or not by the consumer,
//! claims that outlive a restart, and shutdown.

use std::io::{Cursor, Write};
use std::path::Path;
use std::time::Duration;

use faxgate_scanner::{
    FileLoader, HotFolderConfig, HotFolderHandle, HotFolderItem, HotFolderStatus, Origin,
};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::common::{Rect, assert_rects, gray_with_rects};

struct Running {
    handle: HotFolderHandle,
    rx: mpsc::Receiver<HotFolderItem>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

async fn start(dir: &Path, settle_ms: u64) -> Running {
    start_with(dir, settle_ms, |_| {}).await
}

async fn start_with(
    dir: &Path,
    settle_ms: u64,
    tweak: impl FnOnce(&mut HotFolderConfig),
) -> Running {
    let mut config = HotFolderConfig::new(dir);
    config.settle = Duration::from_millis(settle_ms);
    config.poll_interval = Duration::from_millis(100);
    config.loader = FileLoader::default();
    tweak(&mut config);
    let (tx, rx) = mpsc::channel(4);
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let handle = HotFolderHandle::spawn(config, tx, cancel.child_token(), &tracker)
        .await
        .unwrap();
    Running {
        handle,
        rx,
        cancel,
        tracker,
    }
}

impl Running {
    /// The next document, within 15 s.
    async fn next(&mut self) -> HotFolderItem {
        tokio::time::timeout(Duration::from_secs(15), self.rx.recv())
            .await
            .expect("a document within 15 s")
            .expect("the hot folder is running")
    }

    /// The counters; only while no document waits for its confirmation
    /// (the actor answers between files).
    async fn status(&self) -> HotFolderStatus {
        tokio::time::timeout(Duration::from_secs(5), self.handle.status())
            .await
            .expect("the hot folder answers within 5 s")
            .unwrap()
    }

    /// Asserts the counters (retrying, done, failed).
    async fn assert_counts(&self, retrying: usize, done: u64, failed: u64) {
        let status = self.status().await;
        assert_eq!(
            (status.retrying, status.done, status.failed),
            (retrying, done, failed),
            "{status:?}"
        );
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .expect("the hot folder stops within 5 s of cancellation");
        assert!(self.handle.status().await.is_err(), "actor gone after stop");
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The claimed files: `processing/KEY-NAME`.
fn claimed(dir: &Path) -> Vec<String> {
    names(&dir.join("processing"))
}

/// Waits up to `secs` for `cond`.
async fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(secs), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not within {secs} s: {what}"));
}

/// Waits up to `secs` for `name` to be in failed/ with its reason, and
/// returns the reason.
async fn failed_reason(dir: &Path, name: &str, secs: u64) -> String {
    let reason_path = dir.join("failed").join(format!("{name}.reason.txt"));
    wait_for(secs, &format!("{name} in failed/ with a reason"), || {
        reason_path.exists()
    })
    .await;
    std::fs::read_to_string(&reason_path).unwrap()
}

fn png_bytes() -> Vec<u8> {
    let img = gray_with_rects(850, 1100, &[Rect::new(100.0, 200.0, 300.0, 500.0)]);
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowly_written_file_is_taken_only_when_complete() {
    let dir = tempfile::tempdir().unwrap();
    let mut hf = start(dir.path(), 5000).await;
    let png = png_bytes();
    let path = dir.path().join("slow.png");
    let mut file = std::fs::File::create(&path).unwrap();
    // Eight chunks with 300 ms pauses: 2.4 s of writing, each pause well
    // under the 5 s settle interval (margin for a loaded CI machine, also
    // for the `waiting` check after the last chunk) but three polls long,
    // so the actor sees the file many times meanwhile.
    for chunk in png.chunks(png.len().div_ceil(8)) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            matches!(hf.rx.try_recv(), Err(TryRecvError::Empty)),
            "a document came out of a partly written file"
        );
        assert!(path.exists(), "the partly written file was moved");
        assert!(names(&dir.path().join("failed")).is_empty());
    }
    drop(file);
    let status = hf.handle.status().await.unwrap();
    assert_eq!((status.done, status.failed), (0, 0));
    assert_eq!(status.waiting, 1, "{status:?}");
    // About 5 s of settling, then reading.
    let HotFolderItem {
        document: doc,
        key,
        ack,
    } = hf.next().await;
    assert_eq!(doc.name, "slow.png");
    assert_eq!(key.len(), 16, "{key}");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    assert_eq!(doc.origin, Origin::HotFolder(path.clone()));
    assert_eq!(doc.pages.len(), 1);
    let s = 1728.0 / 850.0;
    assert_rects(
        &doc.pages[0],
        &[Rect::new(100.0, 200.0, 300.0, 500.0).map(s, s * 196.0 / 204.0, 0.0)],
        3.0,
        "hot folder page",
    );
    // Claimed (in processing/ under its key), not moved to done/ before
    // the consumer confirms that it stored the document.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!path.exists(), "not claimed");
    assert_eq!(claimed(dir.path()), [format!("{key}-slow.png")]);
    assert!(names(&dir.path().join("done")).is_empty());
    // Moved to done/ under its own name right after the confirmation.
    assert!(ack.confirm(), "the hot folder waits for the confirmation");
    wait_for(5, "slow.png moved to done/", || {
        claimed(dir.path()).is_empty()
    })
    .await;
    assert_eq!(names(&dir.path().join("done")), ["slow.png"]);
    assert_eq!(
        std::fs::read(dir.path().join("done/slow.png")).unwrap(),
        png,
        "done/ holds the file unchanged"
    );
    let status = hf.status().await;
    assert_eq!(
        status,
        HotFolderStatus {
            waiting: 0,
            retrying: 0,
            done: 1,
            failed: 0
        }
    );
    hf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_go_to_failed_with_a_reason_and_temporaries_are_left() {
    let dir = tempfile::tempdir().unwrap();
    let mut hf = start(dir.path(), 300).await;
    std::fs::write(dir.path().join("junk.png"), b"this is not a picture").unwrap();
    std::fs::write(dir.path().join("upload.pdf.part"), b"%PDF-1.4 half").unwrap();
    std::fs::write(dir.path().join(".hidden.png"), png_bytes()).unwrap();
    std::fs::write(dir.path().join("good.png"), png_bytes()).unwrap();
    let item = hf.next().await;
    assert_eq!(item.document.name, "good.png");
    assert!(item.ack.confirm());
    // Let a few more passes run, then look.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = hf.handle.rescan().await.unwrap();
    assert_eq!((status.done, status.failed), (1, 1), "{status:?}");
    assert_eq!(
        names(&dir.path().join("failed")),
        ["junk.png", "junk.png.reason.txt"]
    );
    let reason = std::fs::read_to_string(dir.path().join("failed/junk.png.reason.txt")).unwrap();
    assert!(
        reason.contains("junk.png") && reason.contains("unknown image format"),
        "{reason}"
    );
    assert_eq!(
        names(dir.path()),
        [
            ".hidden.png",
            "done",
            "failed",
            "processing",
            "upload.pdf.part"
        ],
        "temporary names stay untouched"
    );
    assert!(claimed(dir.path()).is_empty());
    assert!(matches!(hf.rx.try_recv(), Err(TryRecvError::Empty)));
    // The same name again does not overwrite failed/junk.png. The reason
    // file is written after the move, so wait for it too.
    std::fs::write(dir.path().join("junk.png"), b"still not a picture").unwrap();
    let reason_1 = dir.path().join("failed/junk-1.png.reason.txt");
    tokio::time::timeout(Duration::from_secs(10), async {
        while dir.path().join("junk.png").exists() || !reason_1.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("junk.png is moved to failed/ with a reason within 10 s");
    assert_eq!(
        names(&dir.path().join("failed")),
        [
            "junk-1.png",
            "junk-1.png.reason.txt",
            "junk.png",
            "junk.png.reason.txt"
        ]
    );
    hf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_leaves_files_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let mut hf = start(dir.path(), 200).await;
    for n in ["a.png", "b.png", "c.png"] {
        std::fs::write(dir.path().join(n), png_bytes()).unwrap();
    }
    let pngs = || -> Vec<String> {
        names(dir.path())
            .into_iter()
            .filter(|n| n.ends_with(".png"))
            .collect()
    };
    // One document is in flight; while the consumer has not confirmed it,
    // no file is moved and no other file is read.
    let first = hf.next().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut waiting = pngs();
    waiting.push(first.document.name.clone());
    waiting.sort();
    assert_eq!(waiting, ["a.png", "b.png", "c.png"]);
    assert_eq!(
        claimed(dir.path()),
        [format!("{}-{}", first.key, first.document.name)]
    );
    assert!(names(&dir.path().join("done")).is_empty());
    assert!(matches!(hf.rx.try_recv(), Err(TryRecvError::Empty)));
    let mut got = vec![first.document.name.clone()];
    assert!(first.ack.confirm());
    for _ in 0..2 {
        let item = hf.next().await;
        got.push(item.document.name.clone());
        assert!(item.ack.confirm());
    }
    got.sort();
    assert_eq!(got, ["a.png", "b.png", "c.png"]);
    wait_for(5, "all three files in done/", || {
        names(&dir.path().join("done")).len() == 3
    })
    .await;
    assert!(pngs().is_empty());
    assert!(claimed(dir.path()).is_empty());
    hf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_document_stays_in_the_folder_and_is_offered_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut hf = start_with(dir.path(), 200, |c| {
        c.retry_delay = Duration::from_secs(2);
        c.max_offers = 5;
    })
    .await;
    let png = png_bytes();
    let path = dir.path().join("fax.png");
    std::fs::write(&path, &png).unwrap();
    let item = hf.next().await;
    assert_eq!(item.document.name, "fax.png");
    let key = item.key.clone();
    let claim = dir.path().join("processing").join(format!("{key}-fax.png"));
    // The consumer could not store it: it drops the item unconfirmed.
    drop(item);
    hf.assert_counts(1, 0, 0).await;
    assert!(
        claim.exists(),
        "the file of an unconfirmed document left processing/"
    );
    assert!(names(&dir.path().join("done")).is_empty());
    assert!(names(&dir.path().join("failed")).is_empty());
    // Offered again after the retry delay, from the same file, with the
    // same key.
    let again = hf.next().await;
    assert_eq!(again.document.name, "fax.png");
    assert_eq!(again.key, key);
    assert_eq!(again.document.origin, Origin::HotFolder(path.clone()));
    assert!(claim.exists(), "moved before the document was confirmed");
    assert!(again.ack.confirm());
    wait_for(5, "fax.png moved to done/", || !claim.exists()).await;
    assert!(!path.exists());
    assert_eq!(names(&dir.path().join("done")), ["fax.png"]);
    assert_eq!(std::fs::read(dir.path().join("done/fax.png")).unwrap(), png);
    assert!(names(&dir.path().join("failed")).is_empty());
    let status = hf.status().await;
    assert_eq!(
        status,
        HotFolderStatus {
            waiting: 0,
            retrying: 0,
            done: 1,
            failed: 0
        }
    );
    assert!(matches!(hf.rx.try_recv(), Err(TryRecvError::Empty)));
    hf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_never_confirmed_goes_to_failed_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut hf = start_with(dir.path(), 200, |c| {
        c.retry_delay = Duration::from_millis(100);
        c.max_offers = 2;
    })
    .await;
    let path = dir.path().join("lost.png");
    std::fs::write(&path, png_bytes()).unwrap();
    for _ in 0..2 {
        let item = hf.next().await;
        assert_eq!(item.document.name, "lost.png");
        assert_eq!(claimed(dir.path()), [format!("{}-lost.png", item.key)]);
        drop(item);
    }
    let reason_path = dir.path().join("failed/lost.png.reason.txt");
    wait_for(5, "lost.png in failed/ with a reason", || {
        claimed(dir.path()).is_empty() && reason_path.exists()
    })
    .await;
    assert!(!path.exists());
    let reason = std::fs::read_to_string(&reason_path).unwrap();
    assert!(
        reason.contains("lost.png") && reason.contains("never confirmed"),
        "{reason}"
    );
    assert!(names(&dir.path().join("done")).is_empty());
    hf.assert_counts(0, 0, 1).await;
    assert!(matches!(hf.rx.try_recv(), Err(TryRecvError::Empty)));
    hf.stop().await;
}

#[tokio::test]
async fn zero_max_offers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let mut config = HotFolderConfig::new(dir.path());
    config.max_offers = 0;
    let err = HotFolderHandle::spawn(config, tx, CancellationToken::new(), &TaskTracker::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_offers"), "{err}");
}

#[tokio::test]
async fn a_missing_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let err = HotFolderHandle::spawn(
        HotFolderConfig::new(dir.path().join("nope")),
        tx,
        CancellationToken::new(),
        &TaskTracker::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_claimed_before_a_restart_is_offered_again_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let png = png_bytes();
    std::fs::write(dir.path().join("night.png"), &png).unwrap();
    let mut hf = start(dir.path(), 200).await;
    let item = hf.next().await;
    let key = item.key.clone();
    // The consumer stored it, but the daemon stops (or crashes) before
    // the file could be moved: the confirmation never arrives.
    hf.stop().await;
    drop(item);
    assert_eq!(claimed(dir.path()), [format!("{key}-night.png")]);
    assert!(names(&dir.path().join("done")).is_empty());

    // After the restart the same drop comes with the same key, so the
    // consumer can tell that it already has it.
    let mut hf = start(dir.path(), 200).await;
    let again = hf.next().await;
    assert_eq!(again.key, key);
    assert_eq!(again.document.name, "night.png");
    assert_eq!(
        again.document.origin,
        Origin::HotFolder(dir.path().join("night.png"))
    );
    assert!(again.ack.confirm());
    wait_for(5, "night.png moved to done/", || {
        claimed(dir.path()).is_empty()
    })
    .await;
    assert_eq!(names(&dir.path().join("done")), ["night.png"]);
    assert_eq!(
        std::fs::read(dir.path().join("done/night.png")).unwrap(),
        png
    );

    // Dropped again (the same bytes, under the same name), it is a new
    // drop with a new key.
    std::fs::write(dir.path().join("night.png"), &png).unwrap();
    let third = hf.next().await;
    assert_ne!(third.key, key);
    assert!(third.ack.confirm());
    wait_for(5, "the second night.png moved to done/", || {
        names(&dir.path().join("done")).len() == 2
    })
    .await;
    assert_eq!(
        names(&dir.path().join("done")),
        ["night-1.png", "night.png"]
    );
    // Names in processing/ that are no claim are left alone.
    std::fs::write(dir.path().join("processing/notes.txt"), b"mine").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(hf.rx.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(claimed(dir.path()), ["notes.txt"]);
    hf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_document_goes_to_failed_at_once_with_the_consumers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut hf = start_with(dir.path(), 200, |c| {
        c.retry_delay = Duration::from_millis(100);
        c.max_offers = 5;
    })
    .await;
    std::fs::write(dir.path().join("wide.png"), png_bytes()).unwrap();
    let item = hf.next().await;
    assert!(item.ack.refuse("page 2 is wider than page 1"));
    let reason = failed_reason(dir.path(), "wide.png", 5).await;
    assert!(
        reason.contains("wide.png") && reason.contains("page 2 is wider than page 1"),
        "{reason}"
    );
    assert!(claimed(dir.path()).is_empty());
    assert!(names(&dir.path().join("done")).is_empty());
    hf.assert_counts(0, 0, 1).await;
    // Not offered again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(hf.rx.try_recv(), Err(TryRecvError::Empty)));
    hf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_too_long_to_claim_goes_to_failed_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut hf = start(dir.path(), 200).await;
    let long = format!("{}.png", "n".repeat(240));
    std::fs::write(dir.path().join(&long), png_bytes()).unwrap();
    let reason = failed_reason(dir.path(), &long, 5).await;
    assert!(
        reason.contains("244 bytes") && reason.contains("238"),
        "{reason}"
    );
    assert!(matches!(hf.rx.try_recv(), Err(TryRecvError::Empty)));
    hf.stop().await;
}

/// A document whose pages would take more memory than the loader allows
/// goes to failed/ at once with a reason naming the page and the limit;
/// it is neither handed over nor left in processing/ to be tried again
/// (and crash the daemon again) at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_over_the_bitmap_limit_goes_to_failed_and_is_not_retried() {
    use faxgate_fax::{Bitmap, Coding, Resolution};
    let dir = tempfile::tempdir().unwrap();
    let mut hf = start_with(dir.path(), 200, |c| {
        // Three 1728 x 100 pages are 21 600 bytes each.
        c.loader.max_decoded_bytes = 50_000;
        c.retry_delay = Duration::from_millis(100);
        c.max_offers = 5;
    })
    .await;
    let mut page = Bitmap::new(1728, 100);
    for x in 100..400 {
        page.set_pixel(x, 50, true);
    }
    let tiff = faxgate_fax::tiff::write_tiff(
        &[page.clone(), page.clone(), page],
        Coding::Mmr,
        Resolution::Fine,
        faxgate_fax::tiff::TiffWriterOptions::default(),
    )
    .unwrap();
    std::fs::write(dir.path().join("roll.tif"), &tiff).unwrap();
    let reason = failed_reason(dir.path(), "roll.tif", 10).await;
    assert!(
        reason.contains("roll.tif: page 3 (1728x100 pels)")
            && reason.contains("more than the 50000 allowed"),
        "{reason}"
    );
    assert!(claimed(dir.path()).is_empty(), "nothing left to retry");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(hf.rx.try_recv(), Err(TryRecvError::Empty)));
    hf.assert_counts(0, 0, 1).await;
    hf.stop().await;
}

/// A symbolic link dropped into the hot folder (say to a received fax in
/// the appliance's state) is never read: no document comes of it, it is
/// moved to failed/ as a link with a reason, and what it points to is
/// left as it was, where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_goes_to_failed_unread_as_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("0000.png");
    let png = png_bytes();
    std::fs::write(&target, &png).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("x.png")).unwrap();
    let mut hf = start(dir.path(), 200).await;
    let reason = failed_reason(dir.path(), "x.png", 5).await;
    assert!(
        reason.contains("x.png") && reason.contains("symbolic link"),
        "{reason}"
    );
    let moved = dir.path().join("failed/x.png");
    assert!(
        std::fs::symlink_metadata(&moved)
            .unwrap()
            .file_type()
            .is_symlink(),
        "moved as a link, not copied through"
    );
    assert_eq!(std::fs::read_link(&moved).unwrap(), target);
    assert_eq!(
        std::fs::read(&target).unwrap(),
        png,
        "the target is unchanged"
    );
    assert!(claimed(dir.path()).is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        matches!(hf.rx.try_recv(), Err(TryRecvError::Empty)),
        "no document from a link"
    );
    let status = hf.status().await;
    assert_eq!((status.done, status.failed), (0, 1), "{status:?}");
    hf.stop().await;
}

/// A hard link dropped into the hot folder is refused like a symbolic
/// one: it can make a file that belongs elsewhere appear in the folder.
/// No document comes of it, it goes to failed/ with a reason, and the
/// file's other name is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_link_goes_to_failed_unread() {
    let dir = tempfile::tempdir().unwrap();
    // Beside the hot folder on the same file system: a hard link cannot
    // cross file systems.
    let target = dir.path().join("elsewhere.png");
    let hot = dir.path().join("hot");
    std::fs::create_dir(&hot).unwrap();
    let png = png_bytes();
    std::fs::write(&target, &png).unwrap();
    std::fs::hard_link(&target, hot.join("x.png")).unwrap();
    let mut hf = start(&hot, 200).await;
    let reason = failed_reason(&hot, "x.png", 5).await;
    assert!(
        reason.contains("x.png") && reason.contains("hard link"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read(&target).unwrap(),
        png,
        "the other name is unchanged"
    );
    assert!(claimed(&hot).is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        matches!(hf.rx.try_recv(), Err(TryRecvError::Empty)),
        "no document from a hard link"
    );
    let status = hf.status().await;
    assert_eq!((status.done, status.failed), (0, 1), "{status:?}");
    hf.stop().await;
}

/// A hard link that sits in processing/ (claimed by an older version, or
/// linked while the file was there) is refused when read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_hard_link_goes_to_failed_unread() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere.png");
    let hot = dir.path().join("hot");
    std::fs::create_dir_all(hot.join("processing")).unwrap();
    std::fs::write(&target, png_bytes()).unwrap();
    std::fs::hard_link(&target, hot.join("processing/0123456789abcdef-y.png")).unwrap();
    let mut hf = start(&hot, 200).await;
    let reason = failed_reason(&hot, "y.png", 5).await;
    assert!(reason.contains("hard link"), "{reason}");
    assert!(claimed(&hot).is_empty());
    assert!(matches!(hf.rx.try_recv(), Err(TryRecvError::Empty)));
    hf.stop().await;
}

/// A link that sits in processing/ (claimed by an older version) is not
/// left there for ever: reading it is refused and it goes to failed/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_symlink_goes_to_failed_unread() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("appliance.png");
    std::fs::write(&target, png_bytes()).unwrap();
    std::fs::create_dir(dir.path().join("processing")).unwrap();
    std::os::unix::fs::symlink(
        &target,
        dir.path().join("processing/0123456789abcdef-y.png"),
    )
    .unwrap();
    let mut hf = start(dir.path(), 200).await;
    let reason = failed_reason(dir.path(), "y.png", 5).await;
    assert!(reason.contains("symbolic link"), "{reason}");
    assert!(
        std::fs::symlink_metadata(dir.path().join("failed/y.png"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(claimed(dir.path()).is_empty());
    assert!(matches!(hf.rx.try_recv(), Err(TryRecvError::Empty)));
    hf.stop().await;
}

/// A read that runs out of time (the appliance busy) is tried again, up
/// to max_offers attempts, before the file goes to failed/; the reason
/// says how often it was tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_runs_out_of_time_is_retried_before_failing() {
    let dir = tempfile::tempdir().unwrap();
    let mut hf = start_with(dir.path(), 200, |c| {
        c.loader.max_duration = Duration::from_nanos(1);
        c.retry_delay = Duration::from_millis(100);
        c.max_offers = 3;
    })
    .await;
    std::fs::write(dir.path().join("slow.png"), png_bytes()).unwrap();
    let reason = failed_reason(dir.path(), "slow.png", 10).await;
    assert!(
        reason.contains("slow.png")
            && reason.contains("gave up after")
            && reason.contains("tried 3 times"),
        "{reason}"
    );
    assert!(claimed(dir.path()).is_empty());
    assert!(matches!(hf.rx.try_recv(), Err(TryRecvError::Empty)));
    hf.assert_counts(0, 0, 1).await;
    hf.stop().await;
}
