//! Direct bindings for every host call the filter makes.
//!
//! The SDK's wrappers `panic!` on any status they do not expect, and a panic
//! kills the worker's VM. Shared data can fail for real (the host's store is
//! down, or a remote one is), and no other call is worth a worker: here every
//! status becomes a `Result` (the SDK is left the context dispatch only).

use std::ptr::null_mut;

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    #[cfg(feature = "fleet")]
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
}

/// Header maps of the ABI.
#[derive(Clone, Copy)]
pub enum HeaderMap {
    Request = 0,
    Response = 2,
}

const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const METRIC_COUNTER: u32 = 0;

fn status_result(call: &str, status: u32) -> Result<(), String> {
    match status {
        OK => Ok(()),
        other => Err(format!("{call} returned status {other}")),
    }
}

/// Sets `name` to `value` in a header map of the stream, or removes it.
pub fn set_header(map: HeaderMap, name: &str, value: Option<&str>) -> Result<(), String> {
    // SAFETY: the slices outlive the call; the host only reads them.
    let status = unsafe {
        match value {
            Some(v) => proxy_replace_header_map_value(
                map as u32,
                name.as_ptr(),
                name.len(),
                v.as_ptr(),
                v.len(),
            ),
            None => proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()),
        }
    };
    status_result("setting a header", status)
}

/// Makes a host call that hands the guest a buffer through two return
/// pointers, and takes ownership of it: the status, and the bytes if the call
/// succeeded with any.
fn with_returned_buffer(
    call: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
) -> (u32, Option<Vec<u8>>) {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let status = call(&mut data, &mut size);
    if status != OK || data.is_null() {
        return (status, None);
    }
    // SAFETY: on `Ok` the host allocated `data` with our
    // `proxy_on_memory_allocate`, a boxed slice of `size` bytes, now ours.
    (
        status,
        Some(unsafe { Vec::from_raw_parts(data, size, size) }),
    )
}

/// The plugin's configuration; `Ok(None)` when the host has none.
pub fn plugin_configuration() -> Result<Option<Vec<u8>>, String> {
    // SAFETY: the return pointers are the helper's live locals.
    let (status, bytes) = with_returned_buffer(|data, size| unsafe {
        proxy_get_buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, 0, usize::MAX, data, size)
    });
    match status {
        OK => Ok(bytes),
        NOT_FOUND => Ok(None),
        other => Err(format!("proxy_get_buffer_bytes returned status {other}")),
    }
}

/// The host's clock in milliseconds since the epoch (0 if it has none: the
/// limiter keeps every window exact anyway, never recording a time before
/// its newest).
pub fn now_ms() -> u64 {
    let mut nanos: u64 = 0;
    // SAFETY: the pointer is to a live local.
    match unsafe { proxy_get_current_time_nanoseconds(&mut nanos) } {
        OK => nanos / 1_000_000,
        _ => 0,
    }
}

/// Best effort: a log line that cannot be written is not worth a request.
pub fn log(level: u32, message: &str) {
    // SAFETY: the slice outlives the call; the host only reads it.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

pub fn define_counter(name: &str) -> Result<u32, String> {
    let mut id: u32 = 0;
    // SAFETY: the slice and the pointer outlive the call.
    let status = unsafe { proxy_define_metric(METRIC_COUNTER, name.as_ptr(), name.len(), &mut id) };
    status_result("proxy_define_metric", status).map(|()| id)
}

/// Best effort, like the log.
pub fn increment(id: u32) {
    // SAFETY: no pointers.
    let _ = unsafe { proxy_increment_metric(id, 1) };
}

const MAP_REQUEST_HEADERS: u32 = 0;
#[cfg(feature = "fleet")]
const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
#[cfg(feature = "fleet")]
const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
#[cfg(feature = "fleet")]
const STREAM_HTTP_REQUEST: u32 = 0;

/// Lets a paused request go on upstream (`proxy_continue_stream`).
#[cfg(feature = "fleet")]
pub fn continue_request() -> Result<(), String> {
    // SAFETY: no pointers.
    let status = unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) };
    status_result("proxy_continue_stream", status)
}

/// The `:status` of the callout response being delivered; `None` when the
/// call got no response (the host gives no headers then).
#[cfg(feature = "fleet")]
pub fn http_call_response_status() -> Option<u16> {
    // SAFETY: the return pointers are the helper's live locals.
    let (_, bytes) = with_returned_buffer(|data, size| unsafe {
        proxy_get_header_map_pairs(MAP_HTTP_CALL_RESPONSE_HEADERS, data, size)
    });
    let block = crate::header_block::HeaderBlock::new(bytes?);
    let status = block.get(":status")?;
    std::str::from_utf8(status).ok()?.parse().ok()
}

/// The body of the callout response being delivered (empty if none).
#[cfg(feature = "fleet")]
pub fn http_call_response_body(size: usize) -> Vec<u8> {
    if size == 0 {
        return Vec::new();
    }
    // SAFETY: the return pointers are the helper's live locals.
    let (_, bytes) = with_returned_buffer(|data, returned| unsafe {
        proxy_get_buffer_bytes(BUFFER_HTTP_CALL_RESPONSE_BODY, 0, size, data, returned)
    });
    bytes.unwrap_or_default()
}

/// Answers the request from the filter. The SDK's wrapper panics on any
/// status but `Ok`, and a panic kills the worker's VM: here it is an error.
pub fn send_local_response(
    status: u16,
    headers: &crate::header_block::HeaderBlock,
    body: &[u8],
) -> Result<(), String> {
    let headers = headers.as_bytes();
    // SAFETY: the slices outlive the call; the host only reads them.
    let result = unsafe {
        proxy_send_local_response(
            u32::from(status),
            null_mut(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    match result {
        OK => Ok(()),
        other => Err(format!("proxy_send_local_response returned status {other}")),
    }
}

/// The request's headers as one block, read in place by the filter (the
/// SDK's reader copies each one, and panics on a status it does not expect).
/// A host that cannot answer gives an empty block: the gate refuses a
/// request it cannot see.
pub fn get_request_headers() -> crate::header_block::HeaderBlock {
    // SAFETY: the return pointers are the helper's live locals.
    let (_, bytes) = with_returned_buffer(|data, size| unsafe {
        proxy_get_header_map_pairs(MAP_REQUEST_HEADERS, data, size)
    });
    bytes
        .map(crate::header_block::HeaderBlock::new)
        .unwrap_or_default()
}

/// `(value, cas)`; an absent key is `(None, 0)`.
pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, u32), String> {
    let mut cas: u32 = 0;
    // SAFETY: the key outlives the call; the pointers are live locals.
    let (status, value) = with_returned_buffer(|data, size| unsafe {
        proxy_get_shared_data(key.as_ptr(), key.len(), data, size, &mut cas)
    });
    match status {
        OK => Ok((value, cas)),
        NOT_FOUND => Ok((None, 0)),
        other => Err(format!("proxy_get_shared_data returned status {other}")),
    }
}

/// `Ok(false)` on a CAS mismatch.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<bool, String> {
    // SAFETY: the slices outlive the call; the host only reads them.
    let status =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    match status {
        OK => Ok(true),
        CAS_MISMATCH => Ok(false),
        other => Err(format!("proxy_set_shared_data returned status {other}")),
    }
}

/// Best effort: a host without this property simply has no access-log field.
pub fn set_property(name: &str, value: &[u8]) {
    // SAFETY: as above; a one-part path needs no separator.
    let _ = unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) };
}

/// A property as UTF-8 text. `path` is in the ABI's form, its parts
/// separated by NUL (`b"source\0address"`). `None` when the host has no such
/// property or answers anything but `Ok`.
pub fn get_property(path: &[u8]) -> Option<String> {
    // SAFETY: the path outlives the call; the pointers are live locals.
    let (_, bytes) = with_returned_buffer(|data, size| unsafe {
        proxy_get_property(path.as_ptr(), path.len(), data, size)
    });
    String::from_utf8(bytes?).ok()
}
