//! The access log.

/// The access log: off by default, so the hot path logs nothing. When on,
/// request threads hand their line to a logging thread that writes through a
/// buffer and flushes whenever it runs out of lines: no syscall on the
/// request path, and one write per burst under load.
pub(super) struct AccessLog(Option<std::sync::mpsc::Sender<String>>);

impl AccessLog {
    pub(super) fn start(enabled: bool) -> AccessLog {
        if !enabled {
            return AccessLog(None);
        }
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                use std::io::Write as _;
                let mut out = std::io::BufWriter::new(std::io::stderr());
                while let Ok(line) = rx.recv() {
                    let _ = writeln!(out, "{line}");
                    while let Ok(line) = rx.try_recv() {
                        let _ = writeln!(out, "{line}");
                    }
                    let _ = out.flush();
                }
            });
        match spawned {
            Ok(_) => AccessLog(Some(tx)),
            Err(e) => {
                crate::log::warn(format_args!("no access log: {e}"));
                AccessLog(None)
            }
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.0.is_some()
    }

    pub(super) fn write(&self, line: String) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(line);
        }
    }
}
