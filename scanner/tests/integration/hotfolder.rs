//! The hot folder on a real folder: a slowly written file, a bad file,
//! temporary names, and shutdown.

use std::io::{Cursor, Write};
use std::path::Path;
use std::time::Duration;

use faxgate_scanner::{
    Document, FileLoader, HotFolderConfig, HotFolderHandle, HotFolderStatus, Origin,
};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::common::{Rect, assert_rects, gray_with_rects};

struct Running {
    handle: HotFolderHandle,
    rx: mpsc::Receiver<Document>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

async fn start(dir: &Path, settle_ms: u64) -> Running {
    let mut config = HotFolderConfig::new(dir);
    config.settle = Duration::from_millis(settle_ms);
    config.poll_interval = Duration::from_millis(100);
    config.loader = FileLoader::default();
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
    let doc = tokio::time::timeout(Duration::from_secs(15), hf.rx.recv())
        .await
        .expect("the complete file is picked up")
        .unwrap();
    assert_eq!(doc.name, "slow.png");
    assert_eq!(doc.origin, Origin::HotFolder(path.clone()));
    assert_eq!(doc.pages.len(), 1);
    let s = 1728.0 / 850.0;
    assert_rects(
        &doc.pages[0],
        &[Rect::new(100.0, 200.0, 300.0, 500.0).map(s, s * 196.0 / 204.0, 0.0)],
        3.0,
        "hot folder page",
    );
    // Moved to done/ right after the hand-over.
    tokio::time::timeout(Duration::from_secs(5), async {
        while path.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(names(&dir.path().join("done")), ["slow.png"]);
    assert_eq!(
        std::fs::read(dir.path().join("done/slow.png")).unwrap(),
        png,
        "done/ holds the file unchanged"
    );
    let status = hf.handle.status().await.unwrap();
    assert_eq!(
        status,
        HotFolderStatus {
            waiting: 0,
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
    let doc = tokio::time::timeout(Duration::from_secs(10), hf.rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(doc.name, "good.png");
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
        [".hidden.png", "done", "failed", "upload.pdf.part"],
        "temporary names stay untouched"
    );
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
async fn a_full_output_channel_leaves_files_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = HotFolderConfig::new(dir.path());
    config.settle = Duration::from_millis(200);
    config.poll_interval = Duration::from_millis(50);
    let (tx, mut rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let handle = HotFolderHandle::spawn(config, tx, cancel.clone(), &tracker)
        .await
        .unwrap();
    for n in ["a.png", "b.png", "c.png"] {
        std::fs::write(dir.path().join(n), png_bytes()).unwrap();
    }
    // One document fits the channel, the actor holds the second waiting
    // to send; the third file stays in the folder.
    let left = || -> Vec<String> {
        names(dir.path())
            .into_iter()
            .filter(|n| n.ends_with(".png"))
            .collect()
    };
    let moved = tokio::time::timeout(Duration::from_secs(15), async {
        while left().len() != 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        moved.is_ok(),
        "not two files left within 15 s: {:?}",
        left()
    );
    // And no more are taken while the channel stays full.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = left();
    assert_eq!(left.len(), 2, "{left:?}");
    let mut got = Vec::new();
    for _ in 0..3 {
        let doc = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(doc.name);
    }
    got.sort();
    assert_eq!(got, ["a.png", "b.png", "c.png"]);
    cancel.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .unwrap();
    drop(handle);
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
