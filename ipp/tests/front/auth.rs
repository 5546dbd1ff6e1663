//! INFRA operations need TLS, HTTP Basic credentials, and the site's own
//! agent (INFRA.md, "Authentication and ownership").

use faxgate_ipp::codes::{op, status};
use faxgate_ipp::message;
use ipp::prelude::*;

use crate::common::{DEVICE_A, KYOTO, OSAKA, Req, TWO_SITES, TestFront, Via, config, pdf};

/// The three INFRA requests an agent starts with, for `site`.
fn infra_requests(t: &TestFront, site: &str, user: &str, job: i32) -> Vec<(&'static str, Req)> {
    vec![
        (
            "Update-Output-Device-Attributes",
            t.req(op::UPDATE_OUTPUT_DEVICE_ATTRIBUTES, site, user)
                .op("output-device-uuid", message::uri(DEVICE_A))
                .add(
                    ipp::model::DelimiterTag::PrinterAttributes,
                    "printer-state",
                    IppValue::Enum(3),
                ),
        ),
        (
            "Fetch-Job",
            t.req(op::FETCH_JOB, site, user)
                .op("output-device-uuid", message::uri(DEVICE_A))
                .op("job-id", IppValue::Integer(job)),
        ),
        (
            "Get-Jobs which-jobs=fetchable",
            t.req(op::GET_JOBS, site, user)
                .op("which-jobs", message::keyword("fetchable"))
                .op("output-device-uuid", message::uri(DEVICE_A)),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infra_without_or_with_wrong_credentials_is_401_not_authenticated() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "5s", TWO_SITES), dir.path()).await;
    let job = t.print("osaka", "alice", &pdf(100)).await;
    let wrong = [
        None,
        Some(("osaka", "not-the-password")),
        Some(("nobody", "whatever")),
    ];
    for creds in wrong {
        for (name, req) in infra_requests(&t, "osaka", "osaka", job) {
            let reply = t.send(Via::Tls, "osaka", &req, b"", creds).await;
            assert_eq!(reply.http, 401, "{name} with {creds:?}: HTTP status");
            assert_eq!(
                reply.www_authenticate.as_deref(),
                Some("Basic realm=\"faxgate\""),
                "{name} with {creds:?}"
            );
            let resp = reply.ipp_for(&req);
            assert_eq!(
                resp.status(),
                status::NOT_AUTHENTICATED,
                "{name} with {creds:?}: {}",
                resp.message()
            );
        }
    }
    // A header that is not Basic, or not base64, is the same.
    let req = &infra_requests(&t, "osaka", "osaka", job)[2].1;
    for header in ["Bearer abc", "Basic %%%not-base64%%%", "Basic b3Nha2E="] {
        let reply = send_with_authorization(&t, req, header).await;
        assert_eq!(reply.http, 401, "Authorization: {header}");
        assert_eq!(reply.ipp_for(req).status(), status::NOT_AUTHENTICATED);
    }
    // Nothing was registered or fetched by those attempts.
    let printer = t.printer("osaka").await;
    assert!(
        printer
            .printer_strings("printer-state-reasons")
            .contains(&"offline-report".to_owned())
    );
    assert_eq!(t.job("osaka", job).await.job_int("job-state"), Some(3));
}

async fn send_with_authorization(t: &TestFront, req: &Req, header: &str) -> crate::common::Reply {
    // `post` only builds Basic headers; build this one by hand.
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    let tcp = tokio::net::TcpStream::connect(t.tls).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(t.client_tls.clone())
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let request = hyper::Request::post("/ipp/print/osaka")
        .header(hyper::header::HOST, t.tls.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/ipp")
        .header(hyper::header::AUTHORIZATION, header)
        .body(Full::new(bytes::Bytes::from(req.bytes())))
        .unwrap();
    let resp = sender.send_request(request).await.unwrap();
    let reply = crate::common::read_reply(resp).await.unwrap();
    driver.abort();
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infra_over_plain_http_is_forbidden() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "5s", TWO_SITES), dir.path()).await;
    let job = t.print("osaka", "alice", &pdf(100)).await;
    for creds in [Some(OSAKA), None] {
        for (name, req) in infra_requests(&t, "osaka", "osaka", job) {
            let reply = t.send(Via::Plain, "osaka", &req, b"", creds).await;
            let resp = reply.ipp_for(&req);
            assert_eq!(
                resp.status(),
                status::FORBIDDEN,
                "{name} over plain HTTP with {:?}: {}",
                creds.map(|c| c.0),
                resp.message()
            );
            assert!(resp.message().contains("TLS"), "{}", resp.message());
        }
    }
    // Still not registered: the plain attempt changed nothing.
    assert!(
        t.printer("osaka")
            .await
            .printer_strings("printer-state-reasons")
            .contains(&"offline-report".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sites_agent_is_not_authorized() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "5s", TWO_SITES), dir.path()).await;
    // kyoto is a valid agent on its own site.
    let resp = t
        .register(
            "kyoto",
            KYOTO,
            "urn:uuid:0b7e5a52-3333-4c3c-8c3c-00000000000c",
            vec![("printer-state", IppValue::Enum(3))],
        )
        .await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    // osaka's site, osaka's device, a job waiting there.
    let resp = t
        .register(
            "osaka",
            OSAKA,
            DEVICE_A,
            vec![("printer-state", IppValue::Enum(3))],
        )
        .await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    let job = t.print("osaka", "alice", &pdf(100)).await;

    // kyoto on osaka's site: every INFRA operation is refused.
    let mut requests = infra_requests(&t, "osaka", "kyoto", job);
    requests.push((
        "Fetch-Document",
        t.req(op::FETCH_DOCUMENT, "osaka", "kyoto")
            .op("output-device-uuid", message::uri(DEVICE_A))
            .op("job-id", IppValue::Integer(job))
            .op("document-number", IppValue::Integer(1)),
    ));
    requests.push((
        "Acknowledge-Job",
        t.req(op::ACKNOWLEDGE_JOB, "osaka", "kyoto")
            .op("output-device-uuid", message::uri(DEVICE_A))
            .op("job-id", IppValue::Integer(job)),
    ));
    requests.push((
        "Deregister-Output-Device",
        t.req(op::DEREGISTER_OUTPUT_DEVICE, "osaka", "kyoto")
            .op("output-device-uuid", message::uri(DEVICE_A)),
    ));
    for (name, req) in requests {
        let resp = t.agent("osaka", KYOTO, &req).await;
        assert_eq!(
            resp.status(),
            status::NOT_AUTHORIZED,
            "kyoto's {name} on osaka: {}",
            resp.message()
        );
        assert!(
            resp.doc.is_empty(),
            "kyoto's {name} on osaka carries no document"
        );
        assert!(
            resp.groups(ipp::model::DelimiterTag::JobAttributes)
                .is_empty(),
            "kyoto's {name} on osaka shows no job"
        );
    }
    // Through its own site, osaka's job does not exist.
    for (name, req) in [
        (
            "Fetch-Job",
            t.req(op::FETCH_JOB, "kyoto", "kyoto")
                .op(
                    "output-device-uuid",
                    message::uri("urn:uuid:0b7e5a52-3333-4c3c-8c3c-00000000000c"),
                )
                .op("job-id", IppValue::Integer(job)),
        ),
        (
            "Fetch-Document",
            t.req(op::FETCH_DOCUMENT, "kyoto", "kyoto")
                .op(
                    "output-device-uuid",
                    message::uri("urn:uuid:0b7e5a52-3333-4c3c-8c3c-00000000000c"),
                )
                .op("job-id", IppValue::Integer(job))
                .op("document-number", IppValue::Integer(1)),
        ),
    ] {
        let resp = t.agent("kyoto", KYOTO, &req).await;
        assert_eq!(
            resp.status(),
            status::NOT_FOUND,
            "kyoto's {name} of osaka's job via /ipp/print/kyoto: {}",
            resp.message()
        );
        assert!(resp.doc.is_empty());
    }
    // osaka's job is untouched and osaka's device still attached.
    let j = t.job("osaka", job).await;
    assert_eq!(j.job_int("job-state"), Some(3));
    assert!(
        j.job_strings("job-state-reasons")
            .contains(&"job-fetchable".to_owned())
    );
    assert!(
        !t.printer("osaka")
            .await
            .printer_strings("printer-state-reasons")
            .contains(&"offline-report".to_owned())
    );
}

/// A device UUID names a device within its site. kyoto's agent learns
/// osaka's UUID (output-device-assigned was once shown to anyone) and
/// sends Deregister-Output-Device for it through its own site: refused,
/// and osaka's job stays with osaka's device, whose report is taken (it
/// was: handed back, fetched again, printed twice). kyoto cannot register
/// that UUID either, and anonymous clients are not shown it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sites_agent_cannot_deregister_or_take_a_devices_uuid() {
    use crate::infra::{acknowledge, printer_attrs, report};
    use faxgate_ipp::codes::job_state;

    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    let resp = t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    let job = t.print("osaka", "alice", &pdf(100)).await;
    acknowledge(&t, DEVICE_A, job).await;

    // Anyone may read the job, but not which device holds it.
    let seen = t.job("osaka", job).await;
    assert_eq!(seen.job_int("job-state"), Some(job_state::PROCESSING));
    assert!(
        seen.job_attr("output-device-assigned").is_none(),
        "an anonymous client is shown the device: {:?}",
        seen.job_attr("output-device-assigned")
    );
    // osaka's agent is.
    let req = t
        .req(op::GET_JOB_ATTRIBUTES, "osaka", "osaka")
        .op("job-id", IppValue::Integer(job));
    let mine = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(
        mine.job_str("output-device-assigned").as_deref(),
        Some(DEVICE_A)
    );

    // kyoto, through its own site, with osaka's UUID.
    let req = t
        .req(op::DEREGISTER_OUTPUT_DEVICE, "kyoto", "kyoto")
        .op("output-device-uuid", message::uri(DEVICE_A));
    let resp = t.agent("kyoto", KYOTO, &req).await;
    assert_eq!(resp.status(), status::FORBIDDEN, "{}", resp.message());
    let resp = t
        .register(
            "kyoto",
            KYOTO,
            DEVICE_A,
            vec![("printer-state", IppValue::Enum(3))],
        )
        .await;
    assert_eq!(resp.status(), status::FORBIDDEN, "{}", resp.message());

    // osaka's job is still osaka's device's, and its report lands.
    let j = t.job("osaka", job).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::PROCESSING));
    assert!(
        j.job_strings("job-state-reasons")
            .contains(&"job-fetched".to_owned()),
        "{:?}",
        j.job_strings("job-state-reasons")
    );
    report(
        &t,
        job,
        job_state::COMPLETED,
        &["job-completed-successfully"],
        "done",
    )
    .await;
    assert_eq!(
        t.job("osaka", job).await.job_int("job-state"),
        Some(job_state::COMPLETED)
    );
    assert!(
        !t.printer("osaka")
            .await
            .printer_strings("printer-state-reasons")
            .contains(&"offline-report".to_owned())
    );
}
