//! The appliance daemon's actors (issue #4). `crate::topology` builds
//! them from config and wires them together; this module holds the
//! actors and what they share.
//!
//! # Layout
//!
//! - [`store`]: SQLite plus page files: outbox jobs, inbox documents,
//!   history. The durability rules live there.
//! - [`session`]: one T.30 session over T.38/TPKT on a byte stream.
//! - [`outbox`]: the sending actor (due jobs → relay CONNECT → session →
//!   delivered pages, retries with backoff).
//! - [`inbound`]: the answering actor (relay demands → accept/reject →
//!   session → durable pages → print).
//! - [`pstn`]: the telephone-line answering actor (`[modem]`: RING →
//!   answer → T.30 over a Class 1 modem → durable pages → print).
//! - [`printer`]: the output-stage actor (complete documents → archive
//!   PDF and printer).
//! - [`panel`]: the front-panel API (HTTP+JSON on loopback) that the
//!   `faxgate send|jobs|cancel|users|inbox` commands call.
//! - [`hotfolder`]: the hot folder feeders (documents dropped into a
//!   `[[hot_folder]]` → outbox jobs, once each).
//! - [`agent`]: the print agent (seed 000), an INFRA Proxy that serves
//!   the printer at a site on the relay's IPP front.
//! - This file: the event [`Bus`], and the conversions between config and
//!   the fax engine.

pub mod agent;
pub mod hotfolder;
pub mod inbound;
pub mod outbox;
pub mod panel;
pub mod printer;
pub mod pstn;
pub mod session;
pub mod store;

use faxgate_config::{FaxCoding, FaxResolution, FaxSection};
use faxgate_fax::Resolution;
use faxgate_fax::t30::{Capabilities, Timers};
use tokio::sync::broadcast;

pub use agent::AgentHandle;
pub use outbox::OutboxHandle;
pub use printer::PrintHandle;

/// Events many actors (and the panel's watchers) care about.
#[derive(Clone, Debug)]
pub enum BusEvent {
    /// An outbox job changed.
    Job(store::JobInfo),
    /// An inbox document changed.
    Inbox(store::InboxDoc),
    /// A received page is durable (MCF may go).
    PageStored {
        /// The sender's job id.
        job_id: String,
        /// The page number in the document (1-based).
        page: u32,
    },
}

/// The broadcast bus. Publishing never blocks; a slow listener misses
/// old events (it can re-read the store).
#[derive(Clone, Debug)]
pub struct Bus {
    tx: broadcast::Sender<BusEvent>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            tx: broadcast::channel(256).0,
        }
    }
}

impl Bus {
    /// Sends an event to every subscriber.
    pub fn publish(&self, event: BusEvent) {
        let _ = self.tx.send(event);
    }

    /// A new subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        self.tx.subscribe()
    }
}

/// The fax resolution a config name stands for.
pub fn resolution_of(r: FaxResolution) -> Resolution {
    match r {
        FaxResolution::Standard => Resolution::Standard,
        FaxResolution::Fine => Resolution::Fine,
        FaxResolution::Superfine => Resolution::SuperFine,
        FaxResolution::R300 => Resolution::R300,
        FaxResolution::R400 => Resolution::R400,
    }
}

/// What this appliance offers in DIS and may choose in DCS.
pub fn fax_caps(fax: &FaxSection) -> Capabilities {
    let mut resolutions: Vec<Resolution> =
        fax.resolutions.iter().map(|r| resolution_of(*r)).collect();
    if !resolutions.contains(&Resolution::Standard) {
        resolutions.push(Resolution::Standard);
    }
    let mut widths = fax.widths.clone();
    if !widths.contains(&faxgate_fax::width::A4) {
        widths.push(faxgate_fax::width::A4);
    }
    Capabilities {
        resolutions,
        widths,
        mr: fax.codings.contains(&FaxCoding::Mr),
        mmr: fax.codings.contains(&FaxCoding::Mmr),
        ecm: fax.ecm,
        modems: Vec::new(),
    }
}

/// The T.30 timers from config.
pub fn timers(fax: &FaxSection) -> Timers {
    Timers {
        t1: fax.timers.t1,
        t2: fax.timers.t2,
        t4: fax.timers.t4,
        t5: fax.timers.t5,
        ..Timers::default()
    }
}
