//! Graceful shutdown of the relay: every logged-in device is told why
//! its connection closes, sessions included, and the server's tasks end
//! within the deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{PW, Raw, bridged_raw, relay};
use faxgate_relay::protocol::{Code, Frame};
use std::time::Duration;

/// Frames until the relay closes the connection.
async fn frames_until_close(raw: &mut Raw) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(f) = raw.recv().await {
        out.push(f);
    }
    out
}

/// Whether `frames` tell the device that the relay is shutting down.
fn says_shutdown(frames: &[Frame]) -> bool {
    frames.iter().any(|f| {
        matches!(
            f,
            Frame::Bye {
                code: Code::Shutdown,
                ..
            } | Frame::Terminate {
                code: Code::Shutdown
            }
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_bye_to_vacant_devices_and_tells_sessions() {
    let r = relay("").await;
    for u in ["nagoya", "tokyo", "osaka"] {
        r.add_user(u, &["g"]);
    }
    let (mut idle, f) = Raw::login(r.addr, "nagoya", PW).await;
    assert!(matches!(f, Frame::LoginOk { .. }), "{f:?}");
    let (mut tokyo, mut osaka) = bridged_raw(&r, "tokyo", "osaka").await;
    r.eventually("a session and a vacant device", |r| {
        r.counts() == (3, 3, 1, 1)
    })
    .await;

    let common::Relay {
        server, dir: _dir, ..
    } = r;
    let finished = tokio::spawn(server.shutdown(Duration::from_secs(5)));

    let frames = frames_until_close(&mut idle).await;
    assert!(
        matches!(
            frames.as_slice(),
            [Frame::Bye {
                code: Code::Shutdown,
                ..
            }]
        ),
        "the vacant device gets BYE(SHUTDOWN) and the close: {frames:?}"
    );
    let caller = frames_until_close(&mut tokyo).await;
    let target = frames_until_close(&mut osaka).await;
    assert!(
        finished.await.unwrap(),
        "the server's tasks did not end within the deadline"
    );
    assert!(
        says_shutdown(&caller) && says_shutdown(&target),
        "a session's sides must hear TERMINATE or BYE(SHUTDOWN) before the close; \
         the caller got {caller:?}, the target {target:?}"
    );
}
