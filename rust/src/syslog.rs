//! Syslog through the C library, so that logging costs Python no module import on the
//! submission path.

use std::ffi::CString;
use std::sync::OnceLock;

/// The facility of every line: mail, as C dma.
const LOG_MAIL: libc::c_int = 2 << 3;

/// The ident given to `openlog` must outlive every later `syslog` call: it is kept here, set once
/// per process (one program, one `-L` tag).
static IDENT: OnceLock<CString> = OnceLock::new();

/// Send `text` at `priority` (a `LOG_*` level) as `ident[pid]` to the mail facility.
pub fn send(ident: &str, priority: i32, text: &str) {
    let ident = IDENT.get_or_init(|| CString::new(ident.replace('\0', "")).unwrap_or_default());
    let Ok(text) = CString::new(text.replace('\0', " ")) else {
        return;
    };
    // SAFETY: NUL-terminated strings; `ident` is static, as openlog requires; the format
    // consumes exactly the one argument given.
    unsafe {
        libc::openlog(ident.as_ptr(), libc::LOG_PID, LOG_MAIL);
        libc::syslog(LOG_MAIL | (priority & 7), c"%s".as_ptr(), text.as_ptr());
    }
}
