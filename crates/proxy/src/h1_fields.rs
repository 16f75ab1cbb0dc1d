//! Field values that both HTTP/1 sides read the same way: the clients' requests (`server::h1`) and the
//! instances' answers (`upstream::h1`); `Content-Length` also for HTTP/2 clients' bodies (`server::h2_conn`).

/// One `Content-Length` field: a number, or a list of the same number (`5, 5`).
pub(crate) fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut found = None;
    for item in value.split(|byte| *byte == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let length = item
            .iter()
            .fold(0u64, |length, digit| length * 10 + u64::from(digit - b'0'));
        match found {
            Some(previous) if previous != length => return None,
            _ => found = Some(length),
        }
    }
    found
}

/// What one `Transfer-Encoding` field lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Codings {
    /// Its last coding is `chunked`.
    pub(crate) chunked_last: bool,
    /// How many times `chunked` is listed.
    pub(crate) chunked: usize,
    /// A coding other than `chunked` is listed.
    pub(crate) other: bool,
}

/// Reads one `Transfer-Encoding` field. Empty list elements are allowed and ignored (RFC 9110 section
/// 5.6.1).
pub(crate) fn transfer_codings(value: &[u8]) -> Codings {
    let mut codings = Codings {
        chunked_last: value
            .rsplit(|byte| *byte == b',')
            .next()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked")),
        chunked: 0,
        other: false,
    };
    for coding in value.split(|byte| *byte == b',') {
        let coding = coding.trim_ascii();
        if coding.eq_ignore_ascii_case(b"chunked") {
            codings.chunked += 1;
        } else if !coding.is_empty() {
            codings.other = true;
        }
    }
    codings
}
