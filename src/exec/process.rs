//! Starting and killing function processes: each runs in its own session
//! (so its process group can be killed as a whole, shells' children
//! included), with a clean environment and an address-space limit, and its
//! output lines go to the edge log.

use std::io;
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use crate::config::Function;

use super::policy;

/// Longest log line forwarded; longer lines are cut.
const MAX_LOG_LINE: u64 = 8 * 1024;
/// Inherited variables a function may see (everything else is cleared).
const PASS_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ", "HOME"];

/// A running function process and its process group. Dropping it kills
/// the whole group.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) child: tokio::process::Child,
    pgid: Option<i32>,
}

impl Group {
    /// Starts `f`'s command in a new session with `env` added to the
    /// function's own env. Stdout and stderr are piped; stdin only when
    /// `stdin` is set.
    pub(crate) fn spawn(f: &Function, env: &[(&str, String)], stdin: bool) -> io::Result<Self> {
        let (prog, args) = f
            .executor
            .command
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let knob = f
            .executor
            .env
            .get(policy::ADDRESS_SPACE_KNOB)
            .map(String::as_str);
        let limit = policy::address_space_limit(f.memory_mb, knob)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut cmd = tokio::process::Command::new(prog);
        cmd.args(args)
            .current_dir(&f.executor.workdir)
            .env_clear()
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for key in PASS_ENV {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        for (k, v) in &f.executor.env {
            if k != policy::ADDRESS_SPACE_KNOB {
                cmd.env(k, v);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls (setsid, setrlimit) on
        // values captured by copy.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(bytes) = limit {
                    let lim = libc::rlimit {
                        rlim_cur: bytes as libc::rlim_t,
                        rlim_max: bytes as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &lim) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {prog}: {e}")))?;
        let pgid = child.id().and_then(|p| i32::try_from(p).ok());
        Ok(Self { child, pgid })
    }

    /// Kills every process of the group (SIGKILL). Idempotent.
    pub(crate) fn kill(&mut self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: plain syscall; a negative pid addresses the group
            // this process leads (setsid made pgid == pid).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.start_kill();
    }

    /// Kills the group and reaps the leader; after this the group id is
    /// never signalled again (it could be reused).
    pub(crate) async fn kill_and_reap(&mut self) -> Option<std::process::ExitStatus> {
        self.kill();
        let status = self.child.wait().await.ok();
        self.pgid = None;
        status
    }

    /// Kills stragglers left in the group after the leader exited, then
    /// forgets the group.
    pub(crate) fn sweep(&mut self) {
        self.kill();
        self.pgid = None;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Forwards `stream`'s lines to the edge log at info level, tagged with
/// the function, the stream name and the request id that `req` reports at
/// the time of the line. `tail` (if given) also keeps the last bytes.
pub(crate) async fn forward_lines<R>(
    stream: R,
    function: Arc<str>,
    which: &'static str,
    req: impl Fn() -> String,
    mut tail: Option<&mut policy::Tail>,
) where
    R: AsyncRead + Unpin,
{
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LOG_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Some(t) = tail.as_deref_mut() {
            t.push(&line);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if !text.is_empty() {
            tracing::info!(target: "fnroute::function", function = %function, req = %req(), stream = which, "{text}");
        }
    }
}
