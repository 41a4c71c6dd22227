//! The host side of the proxy-wasm ABI 0.2.1: the `env.proxy_*` functions a
//! filter imports. Every pointer the guest hands over is bounds-checked by
//! wasmtime's `Memory::read`/`write`; a bad one is `BadArgument`, never a
//! host crash. Imports the filter never calls are left to trap (see `mod.rs`).

use wasmtime::{Caller, Extern, Linker, Memory, TypedFunc};

use super::{Callout, LocalReply, ROOT_CONTEXT, VmState};

/// Status codes of the ABI.
#[repr(u32)]
#[derive(Clone, Copy)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    CasMismatch = 8,
    InternalFailure = 10,
}

const MAP_REQUEST_HEADERS: u32 = 0;
const MAP_RESPONSE_HEADERS: u32 = 2;
const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
const MAP_HTTP_CALL_RESPONSE_TRAILERS: u32 = 7;
const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
const STREAM_HTTP_REQUEST: u32 = 0;
const BUFFER_VM_CONFIGURATION: u32 = 6;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;

type Ctx<'a> = Caller<'a, VmState>;

/// The guest's memory: looked up by name once per VM, then kept (a lookup
/// per host call was an eighth of a request in the filter's profile).
fn memory(caller: &mut Ctx<'_>) -> Option<Memory> {
    if let Some(m) = caller.data().guest.memory {
        return Some(m);
    }
    let m = match caller.get_export("memory") {
        Some(Extern::Memory(m)) => m,
        _ => return None,
    };
    caller.data_mut().guest.memory = Some(m);
    Some(m)
}

/// The guest's allocator, found once per VM like [`memory`].
fn allocator(caller: &mut Ctx<'_>) -> Option<TypedFunc<u32, u32>> {
    if let Some(f) = &caller.data().guest.allocate {
        return Some(f.clone());
    }
    let f = caller
        .get_export("proxy_on_memory_allocate")
        .or_else(|| caller.get_export("malloc"))?
        .into_func()?
        .typed::<u32, u32>(&*caller)
        .ok()?;
    caller.data_mut().guest.allocate = Some(f.clone());
    Some(f)
}

/// Copies guest memory out, once: into uninitialised capacity, not a zeroed
/// buffer that the copy would overwrite (a reply body is up to 160 KB).
fn read(caller: &mut Ctx<'_>, ptr: u32, len: u32) -> Option<Vec<u8>> {
    let mem = memory(caller)?;
    let start = ptr as usize;
    let end = start.checked_add(len as usize)?;
    mem.data(&*caller).get(start..end).map(<[u8]>::to_vec)
}

fn read_string(caller: &mut Ctx<'_>, ptr: u32, len: u32) -> Option<String> {
    String::from_utf8(read(caller, ptr, len)?).ok()
}

fn write(caller: &mut Ctx<'_>, ptr: u32, data: &[u8]) -> Option<()> {
    let mem = memory(caller)?;
    mem.write(&mut *caller, ptr as usize, data).ok()
}

fn write_u32(caller: &mut Ctx<'_>, ptr: u32, v: u32) -> Option<()> {
    write(caller, ptr, &v.to_le_bytes())
}

/// Copies `data` into guest memory allocated by the guest's own allocator and
/// stores its address and size at the two return pointers.
fn return_bytes(caller: &mut Ctx<'_>, data: &[u8], ret_ptr: u32, ret_len: u32) -> Option<()> {
    let alloc = allocator(caller)?;
    let ptr = alloc.call(&mut *caller, data.len() as u32).ok()?;
    write(caller, ptr, data)?;
    write_u32(caller, ret_ptr, ptr)?;
    write_u32(caller, ret_len, data.len() as u32)
}

/// The ABI's map encoding: count, then (key length, value length) pairs, then
/// each key and value followed by a NUL.
pub fn serialize_map(map: &[(String, Vec<u8>)]) -> Vec<u8> {
    let size = 4 + map
        .iter()
        .map(|(k, v)| 10 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

pub fn deserialize_map(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let count = u32_at(0)?;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut out = Vec::with_capacity(count.min(1024));
    for n in 0..count {
        let klen = u32_at(4 + n * 8)?;
        let vlen = u32_at(8 + n * 8)?;
        let key = bytes.get(data..data.checked_add(klen)?)?;
        data += klen + 1;
        let value = bytes.get(data..data.checked_add(vlen)?)?;
        data += vlen + 1;
        out.push((String::from_utf8(key.to_vec()).ok()?, value.to_vec()));
    }
    Some(out)
}

/// `source.address` as Envoy gives it (`1.2.3.4:5678`, `[::1]:5678`). The
/// filter reads it on every request, so an IPv4 address is written digit by
/// digit rather than through `Display`'s padding machinery.
fn address_bytes(address: std::net::SocketAddr) -> Vec<u8> {
    let std::net::SocketAddr::V4(v4) = address else {
        return address.to_string().into_bytes();
    };
    let mut digits = itoa::Buffer::new();
    let mut out = Vec::with_capacity(21);
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        out.extend_from_slice(digits.format(octet).as_bytes());
    }
    out.push(b':');
    out.extend_from_slice(digits.format(v4.port()).as_bytes());
    out
}

fn status(s: Status) -> u32 {
    s as u32
}

fn or_bad(r: Option<()>) -> u32 {
    match r {
        Some(()) => status(Status::Ok),
        None => status(Status::BadArgument),
    }
}

/// Which header map of the current stream a call names.
fn header_map(state: &mut VmState, map: u32) -> Option<&mut Vec<(String, Vec<u8>)>> {
    let stream = state.streams.get_mut(&state.effective)?;
    match map {
        MAP_REQUEST_HEADERS => Some(&mut stream.request_headers),
        MAP_RESPONSE_HEADERS => Some(&mut stream.response_headers),
        MAP_HTTP_CALL_RESPONSE_HEADERS => stream.call_response.as_mut().map(|r| &mut r.headers),
        MAP_HTTP_CALL_RESPONSE_TRAILERS => stream.call_response.as_mut().map(|r| &mut r.trailers),
        _ => None,
    }
}

pub fn add_to_linker(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Ctx<'_>, level: u32, ptr: u32, len: u32| -> u32 {
            let Some(msg) = read(&mut c, ptr, len) else {
                return status(Status::BadArgument);
            };
            let msg = String::from_utf8_lossy(&msg);
            let vm = c.data().vm_id;
            (c.data().log)(level, &format!("[vm {vm}] {msg}"));
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Ctx<'_>, ret: u32| -> u32 {
            let now = (c.data().clock)();
            or_bad(write(&mut c, ret, &now.to_le_bytes()))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Ctx<'_>, ms: u32| -> u32 {
            c.data_mut().tick_ms = ms;
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: Ctx<'_>, context: u32| -> u32 {
            // As Envoy: a context that is gone (its stream ended) is refused.
            let state = c.data_mut();
            if context != ROOT_CONTEXT && !state.streams.contains_key(&context) {
                return status(Status::BadArgument);
            }
            state.effective = context;
            status(Status::Ok)
        },
    )?;
    // A paused request goes on upstream once the callback returns (Envoy
    // resumes it then, not inside the call).
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: Ctx<'_>, stream_type: u32| -> u32 {
            if stream_type != STREAM_HTTP_REQUEST {
                return status(Status::Ok);
            }
            let state = c.data_mut();
            let ctx = state.effective;
            match state.streams.get_mut(&ctx) {
                Some(stream) => {
                    stream.continued = true;
                    status(Status::Ok)
                }
                None => status(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap("env", "proxy_close_stream", |_: Ctx<'_>, _t: u32| -> u32 {
        status(Status::Ok)
    })?;
    // As Envoy: an unknown cluster, or headers without `:method`, `:path`
    // and `:authority`, is BadArgument; the call is made once the guest
    // returns, and answered through `proxy_on_http_call_response`.
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Ctx<'_>,
         up: u32,
         ul: u32,
         hp: u32,
         hl: u32,
         bp: u32,
         bl: u32,
         tp: u32,
         tl: u32,
         timeout_ms: u32,
         token_ptr: u32|
         -> u32 {
            let cluster = read_string(&mut c, up, ul);
            let headers = read(&mut c, hp, hl).and_then(|b| deserialize_map(&b));
            let body = read(&mut c, bp, bl);
            let trailers = read(&mut c, tp, tl).and_then(|b| deserialize_map(&b));
            let (Some(cluster), Some(headers), Some(body), Some(_trailers)) =
                (cluster, headers, body, trailers)
            else {
                return status(Status::BadArgument);
            };
            let has = |name: &str| headers.iter().any(|(k, v)| k == name && !v.is_empty());
            if !c.data().clusters.contains(&cluster)
                || !(has(":method") && has(":path") && has(":authority"))
            {
                return status(Status::BadArgument);
            }
            let state = c.data_mut();
            let context = state.effective;
            if !state.streams.contains_key(&context) {
                return status(Status::BadArgument);
            }
            state.next_token = state.next_token.wrapping_add(1).max(1);
            let token = state.next_token;
            state.calls.push(Callout {
                context,
                token,
                cluster,
                headers,
                body,
                timeout_ms,
            });
            or_bad(write_u32(&mut c, token_ptr, token))
        },
    )?;
    linker.func_wrap("env", "proxy_done", |_: Ctx<'_>| -> u32 {
        status(Status::Ok)
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Ctx<'_>, kind: u32, start: u32, max: u32, ret_ptr: u32, ret_len: u32| -> u32 {
            let data = match kind {
                BUFFER_PLUGIN_CONFIGURATION => c.data().plugin_config.clone(),
                BUFFER_VM_CONFIGURATION => std::sync::Arc::new(Vec::new()),
                BUFFER_HTTP_CALL_RESPONSE_BODY => {
                    let state = c.data();
                    let body = state
                        .streams
                        .get(&state.effective)
                        .and_then(|s| s.call_response.as_ref())
                        .map(|r| r.body.clone());
                    match body {
                        Some(body) => std::sync::Arc::new(body),
                        None => return status(Status::NotFound),
                    }
                }
                _ => return status(Status::NotFound),
            };
            let start = (start as usize).min(data.len());
            let end = start.saturating_add(max as usize).min(data.len());
            let slice = data.get(start..end).unwrap_or_default();
            if slice.is_empty() {
                return or_bad(
                    write_u32(&mut c, ret_ptr, 0).and_then(|()| write_u32(&mut c, ret_len, 0)),
                );
            }
            or_bad(return_bytes(&mut c, slice, ret_ptr, ret_len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |_: Ctx<'_>, _k: u32, _s: u32, _n: u32, _p: u32, _l: u32| -> u32 {
            status(Status::NotFound)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Ctx<'_>, map: u32, ret_ptr: u32, ret_len: u32| -> u32 {
            let Some(pairs) = header_map(c.data_mut(), map).map(|m| serialize_map(m)) else {
                return status(Status::NotFound);
            };
            or_bad(return_bytes(&mut c, &pairs, ret_ptr, ret_len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Ctx<'_>, map: u32, ptr: u32, len: u32| -> u32 {
            let Some(pairs) = read(&mut c, ptr, len).and_then(|b| deserialize_map(&b)) else {
                return status(Status::BadArgument);
            };
            match header_map(c.data_mut(), map) {
                Some(m) => {
                    *m = pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v))
                        .collect();
                    status(Status::Ok)
                }
                None => status(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Ctx<'_>, map: u32, kp: u32, kl: u32, ret_ptr: u32, ret_len: u32| -> u32 {
            let Some(key) = read_string(&mut c, kp, kl) else {
                return status(Status::BadArgument);
            };
            let key = key.to_ascii_lowercase();
            let value = header_map(c.data_mut(), map)
                .and_then(|m| m.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()));
            match value {
                Some(v) => or_bad(return_bytes(&mut c, &v, ret_ptr, ret_len)),
                None => status(Status::NotFound),
            }
        },
    )?;
    for (name, replace) in [
        ("proxy_replace_header_map_value", true),
        ("proxy_add_header_map_value", false),
    ] {
        linker.func_wrap(
            "env",
            name,
            move |mut c: Ctx<'_>, map: u32, kp: u32, kl: u32, vp: u32, vl: u32| -> u32 {
                let (Some(key), Some(value)) = (read_string(&mut c, kp, kl), read(&mut c, vp, vl))
                else {
                    return status(Status::BadArgument);
                };
                let key = key.to_ascii_lowercase();
                let Some(m) = header_map(c.data_mut(), map) else {
                    return status(Status::NotFound);
                };
                if replace {
                    m.retain(|(k, _)| *k != key);
                }
                m.push((key, value));
                status(Status::Ok)
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Ctx<'_>, map: u32, kp: u32, kl: u32| -> u32 {
            let Some(key) = read_string(&mut c, kp, kl) else {
                return status(Status::BadArgument);
            };
            let key = key.to_ascii_lowercase();
            match header_map(c.data_mut(), map) {
                Some(m) => {
                    m.retain(|(k, _)| *k != key);
                    status(Status::Ok)
                }
                None => status(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Ctx<'_>,
         code: u32,
         _dp: u32,
         _dl: u32,
         bp: u32,
         bl: u32,
         hp: u32,
         hl: u32,
         _grpc: i32|
         -> u32 {
            let body = read(&mut c, bp, bl);
            let headers = read(&mut c, hp, hl).and_then(|b| deserialize_map(&b));
            let (Some(body), Some(headers), Ok(status_code)) = (body, headers, u16::try_from(code))
            else {
                return status(Status::BadArgument);
            };
            let state = c.data_mut();
            let ctx = state.effective;
            match state.streams.get_mut(&ctx) {
                Some(stream) => {
                    stream.local_reply = Some(LocalReply {
                        status: status_code,
                        headers,
                        body,
                    });
                    status(Status::Ok)
                }
                None => status(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Ctx<'_>, kp: u32, kl: u32, ret_ptr: u32, ret_len: u32, ret_cas: u32| -> u32 {
            let Some(key) = read_string(&mut c, kp, kl) else {
                return status(Status::BadArgument);
            };
            if let Some(hex) = key.strip_prefix(sessiongate_core::CREDENTIAL_KEY_PREFIX) {
                return match c.data().credentials.record_json(hex) {
                    None => status(Status::NotFound),
                    Some(json) => or_bad(
                        return_bytes(&mut c, &json, ret_ptr, ret_len)
                            .and_then(|()| write_u32(&mut c, ret_cas, 1)),
                    ),
                };
            }
            match c.data().shared.get(&key) {
                Err(_) => status(Status::InternalFailure),
                Ok(None) => status(Status::NotFound),
                Ok(Some((value, cas))) => or_bad(
                    return_bytes(&mut c, &value, ret_ptr, ret_len)
                        .and_then(|()| write_u32(&mut c, ret_cas, cas)),
                ),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Ctx<'_>, kp: u32, kl: u32, vp: u32, vl: u32, cas: u32| -> u32 {
            let (Some(key), Some(value)) = (read_string(&mut c, kp, kl), read(&mut c, vp, vl))
            else {
                return status(Status::BadArgument);
            };
            match c.data().shared.set(&key, value, cas) {
                Err(_) => status(Status::InternalFailure),
                Ok(true) => status(Status::Ok),
                Ok(false) => status(Status::CasMismatch),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Ctx<'_>, pp: u32, pl: u32, ret_ptr: u32, ret_len: u32| -> u32 {
            let Some(path) = read(&mut c, pp, pl) else {
                return status(Status::BadArgument);
            };
            let path: Vec<&[u8]> = path.split(|&b| b == 0).collect();
            let value = match path.as_slice() {
                [b"plugin_name"] => Some(b"sessiongate".to_vec()),
                [b"source", b"address"] => {
                    let ctx = c.data().effective;
                    c.data()
                        .streams
                        .get(&ctx)
                        .and_then(|s| s.source_address)
                        .map(address_bytes)
                }
                _ => None,
            };
            match value {
                Some(v) => or_bad(return_bytes(&mut c, &v, ret_ptr, ret_len)),
                None => status(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: Ctx<'_>, pp: u32, pl: u32, vp: u32, vl: u32| -> u32 {
            let (Some(path), Some(value)) = (read(&mut c, pp, pl), read(&mut c, vp, vl)) else {
                return status(Status::BadArgument);
            };
            let state = c.data_mut();
            let ctx = state.effective;
            match state.streams.get_mut(&ctx) {
                Some(stream) => {
                    let key = String::from_utf8_lossy(&path).replace('\0', ".");
                    stream.properties.insert(key, value);
                    status(Status::Ok)
                }
                None => status(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Ctx<'_>, kind: u32, np: u32, nl: u32, ret_id: u32| -> u32 {
            let Some(name) = read_string(&mut c, np, nl) else {
                return status(Status::BadArgument);
            };
            let id = c.data().stats.define(kind, &name);
            or_bad(write_u32(&mut c, ret_id, id))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: Ctx<'_>, id: u32, offset: i64| -> u32 {
            if c.data().stats.increment(id, offset) {
                status(Status::Ok)
            } else {
                status(Status::NotFound)
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |_: Ctx<'_>, _a: u32, _b: u32, _c: u32| -> u32 { status(Status::NotFound) },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_roundtrip_and_hostile_input() {
        let map = vec![
            (":path".to_owned(), b"/x".to_vec()),
            ("a".to_owned(), vec![0xff, 0]),
        ];
        assert_eq!(deserialize_map(&serialize_map(&map)), Some(map));
        assert_eq!(deserialize_map(&[1, 0, 0, 0]), None);
        assert_eq!(deserialize_map(&[255, 255, 255, 255, 1]), None);
        assert_eq!(deserialize_map(&[]), Some(vec![]));
    }

    #[test]
    fn source_address_as_display_writes_it() {
        for address in [
            "0.0.0.0:0",
            "127.0.0.1:8080",
            "255.255.255.255:65535",
            "10.20.3.4:9",
            "[::1]:443",
            "[2001:db8::7]:1",
        ] {
            let parsed: std::net::SocketAddr = address.parse().unwrap();
            assert_eq!(address_bytes(parsed), address.as_bytes(), "{address}");
        }
    }
}
