//! Operation and status codes the front and the agent use, including the
//! ones the `ipp` crate's enums lack: PWG 5100.18 (INFRA), RFC 3995/3996
//! (subscriptions, ippget) and PWG 5100.22 (Get-Printers).

/// Operation ids (`operation-id`, RFC 8011 section 5.4.15 and the IANA
/// IPP registry).
pub mod op {
    #![allow(missing_docs)]
    pub const PRINT_JOB: u16 = 0x0002;
    pub const PRINT_URI: u16 = 0x0003;
    pub const VALIDATE_JOB: u16 = 0x0004;
    pub const CREATE_JOB: u16 = 0x0005;
    pub const SEND_DOCUMENT: u16 = 0x0006;
    pub const SEND_URI: u16 = 0x0007;
    pub const CANCEL_JOB: u16 = 0x0008;
    pub const GET_JOB_ATTRIBUTES: u16 = 0x0009;
    pub const GET_JOBS: u16 = 0x000A;
    pub const GET_PRINTER_ATTRIBUTES: u16 = 0x000B;
    pub const HOLD_JOB: u16 = 0x000C;
    pub const RELEASE_JOB: u16 = 0x000D;
    pub const PAUSE_PRINTER: u16 = 0x0010;
    pub const RESUME_PRINTER: u16 = 0x0011;
    pub const CREATE_PRINTER_SUBSCRIPTIONS: u16 = 0x0016;
    pub const CANCEL_SUBSCRIPTION: u16 = 0x001B;
    pub const GET_NOTIFICATIONS: u16 = 0x001C;
    pub const CANCEL_MY_JOBS: u16 = 0x0039;
    pub const CLOSE_JOB: u16 = 0x003B;
    pub const IDENTIFY_PRINTER: u16 = 0x003C;
    pub const ACKNOWLEDGE_DOCUMENT: u16 = 0x003F;
    pub const ACKNOWLEDGE_JOB: u16 = 0x0041;
    pub const FETCH_DOCUMENT: u16 = 0x0042;
    pub const FETCH_JOB: u16 = 0x0043;
    pub const GET_OUTPUT_DEVICE_ATTRIBUTES: u16 = 0x0044;
    pub const DEREGISTER_OUTPUT_DEVICE: u16 = 0x0046;
    pub const UPDATE_DOCUMENT_STATUS: u16 = 0x0047;
    pub const UPDATE_JOB_STATUS: u16 = 0x0048;
    pub const UPDATE_OUTPUT_DEVICE_ATTRIBUTES: u16 = 0x0049;
    pub const GET_PRINTERS: u16 = 0x004F;
    pub const CUPS_GET_DEFAULT: u16 = 0x4001;
    pub const CUPS_GET_PRINTERS: u16 = 0x4002;

    /// The name IANA gives an operation, for logs and errors.
    pub fn name(op: u16) -> &'static str {
        match op {
            PRINT_JOB => "Print-Job",
            PRINT_URI => "Print-URI",
            VALIDATE_JOB => "Validate-Job",
            CREATE_JOB => "Create-Job",
            SEND_DOCUMENT => "Send-Document",
            SEND_URI => "Send-URI",
            CANCEL_JOB => "Cancel-Job",
            GET_JOB_ATTRIBUTES => "Get-Job-Attributes",
            GET_JOBS => "Get-Jobs",
            GET_PRINTER_ATTRIBUTES => "Get-Printer-Attributes",
            HOLD_JOB => "Hold-Job",
            RELEASE_JOB => "Release-Job",
            PAUSE_PRINTER => "Pause-Printer",
            RESUME_PRINTER => "Resume-Printer",
            CREATE_PRINTER_SUBSCRIPTIONS => "Create-Printer-Subscriptions",
            CANCEL_SUBSCRIPTION => "Cancel-Subscription",
            GET_NOTIFICATIONS => "Get-Notifications",
            CANCEL_MY_JOBS => "Cancel-My-Jobs",
            CLOSE_JOB => "Close-Job",
            IDENTIFY_PRINTER => "Identify-Printer",
            ACKNOWLEDGE_DOCUMENT => "Acknowledge-Document",
            ACKNOWLEDGE_JOB => "Acknowledge-Job",
            FETCH_DOCUMENT => "Fetch-Document",
            FETCH_JOB => "Fetch-Job",
            GET_OUTPUT_DEVICE_ATTRIBUTES => "Get-Output-Device-Attributes",
            DEREGISTER_OUTPUT_DEVICE => "Deregister-Output-Device",
            UPDATE_DOCUMENT_STATUS => "Update-Document-Status",
            UPDATE_JOB_STATUS => "Update-Job-Status",
            UPDATE_OUTPUT_DEVICE_ATTRIBUTES => "Update-Output-Device-Attributes",
            GET_PRINTERS => "Get-Printers",
            CUPS_GET_DEFAULT => "CUPS-Get-Default",
            CUPS_GET_PRINTERS => "CUPS-Get-Printers",
            _ => "unknown operation",
        }
    }
}

/// Status codes (RFC 8011 section 4.1.6 and the IANA registry).
pub mod status {
    #![allow(missing_docs)]
    pub const OK: u16 = 0x0000;
    pub const OK_IGNORED_OR_SUBSTITUTED: u16 = 0x0001;
    pub const OK_EVENTS_COMPLETE: u16 = 0x0007;
    pub const BAD_REQUEST: u16 = 0x0400;
    pub const FORBIDDEN: u16 = 0x0401;
    pub const NOT_AUTHENTICATED: u16 = 0x0402;
    pub const NOT_AUTHORIZED: u16 = 0x0403;
    pub const NOT_POSSIBLE: u16 = 0x0404;
    pub const TIMEOUT: u16 = 0x0405;
    pub const NOT_FOUND: u16 = 0x0406;
    pub const GONE: u16 = 0x0407;
    pub const REQUEST_ENTITY_TOO_LARGE: u16 = 0x0408;
    pub const REQUEST_VALUE_TOO_LONG: u16 = 0x0409;
    pub const DOCUMENT_FORMAT_NOT_SUPPORTED: u16 = 0x040A;
    pub const ATTRIBUTES_OR_VALUES_NOT_SUPPORTED: u16 = 0x040B;
    pub const URI_SCHEME_NOT_SUPPORTED: u16 = 0x040C;
    pub const CHARSET_NOT_SUPPORTED: u16 = 0x040D;
    pub const CONFLICTING_ATTRIBUTES: u16 = 0x040E;
    pub const COMPRESSION_NOT_SUPPORTED: u16 = 0x040F;
    pub const COMPRESSION_ERROR: u16 = 0x0410;
    pub const DOCUMENT_FORMAT_ERROR: u16 = 0x0411;
    pub const DOCUMENT_ACCESS_ERROR: u16 = 0x0412;
    pub const NOT_FETCHABLE: u16 = 0x0420;
    pub const INTERNAL_ERROR: u16 = 0x0500;
    pub const OPERATION_NOT_SUPPORTED: u16 = 0x0501;
    pub const SERVICE_UNAVAILABLE: u16 = 0x0502;
    pub const VERSION_NOT_SUPPORTED: u16 = 0x0503;
    pub const DEVICE_ERROR: u16 = 0x0504;
    pub const TEMPORARY_ERROR: u16 = 0x0505;
    pub const NOT_ACCEPTING_JOBS: u16 = 0x0506;
    pub const BUSY: u16 = 0x0507;
    pub const JOB_CANCELED: u16 = 0x0508;
    pub const MULTIPLE_DOCUMENT_JOBS_NOT_SUPPORTED: u16 = 0x0509;

    /// True for the successful-ok family (0x0000..=0x00FF).
    pub fn is_success(code: u16) -> bool {
        code < 0x0100
    }
}

/// `job-state` values (RFC 8011 section 5.3.7).
pub mod job_state {
    #![allow(missing_docs)]
    pub const PENDING: i32 = 3;
    pub const PENDING_HELD: i32 = 4;
    pub const PROCESSING: i32 = 5;
    pub const PROCESSING_STOPPED: i32 = 6;
    pub const CANCELED: i32 = 7;
    pub const ABORTED: i32 = 8;
    pub const COMPLETED: i32 = 9;

    /// True for the three states a job never leaves.
    pub fn is_final(state: i32) -> bool {
        matches!(state, CANCELED | ABORTED | COMPLETED)
    }

    /// The keyword for a state, for logs and JSON.
    pub fn name(state: i32) -> &'static str {
        match state {
            PENDING => "pending",
            PENDING_HELD => "pending-held",
            PROCESSING => "processing",
            PROCESSING_STOPPED => "processing-stopped",
            CANCELED => "canceled",
            ABORTED => "aborted",
            COMPLETED => "completed",
            _ => "unknown",
        }
    }
}

/// `printer-state` values (RFC 8011 section 5.4.11).
pub mod printer_state {
    #![allow(missing_docs)]
    pub const IDLE: i32 = 3;
    pub const PROCESSING: i32 = 4;
    pub const STOPPED: i32 = 5;
}
