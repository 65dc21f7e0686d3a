//! Listening sockets this process inherited instead of binding them: from
//! its predecessor on `SIGUSR2` (`SWITCHYARD_INHERIT_FDS`, see
//! [`crate::upgrade`]) or from systemd socket activation (`LISTEN_PID`,
//! `LISTEN_FDS`, `LISTEN_FDNAMES`).
//!
//! The one `unsafe` block of switchyard is here ([`take_fd`]): turning an
//! inherited file descriptor number into an owned socket.

use anyhow::{bail, ensure, Context};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use switchyard_config::Config;

/// The variable naming the sockets a predecessor hands over, e.g.
/// `proxy:5,tls:6,admin:7,ready:8`.
pub const INHERIT_FDS: &str = "SWITCHYARD_INHERIT_FDS";
/// systemd's socket activation variables (`sd_listen_fds(3)`).
pub const LISTEN_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];
/// systemd passes its sockets from this descriptor on.
const SD_LISTEN_FDS_START: RawFd = 3;

/// Who handed the sockets over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Nobody: bind the configured addresses.
    Nobody,
    /// The switchyard process that started this one on SIGUSR2.
    Predecessor,
    /// systemd socket activation.
    Systemd,
}

/// The inherited sockets, each for one listener of the config.
#[derive(Debug)]
pub struct Inherited {
    pub from: Source,
    pub proxy: Option<TcpListener>,
    pub tls: Option<TcpListener>,
    pub admin: Option<TcpListener>,
    /// Where to tell the predecessor that this process serves.
    pub ready: Option<UnixStream>,
}

impl Inherited {
    pub fn nothing() -> Inherited {
        Inherited {
            from: Source::Nobody,
            proxy: None,
            tls: None,
            admin: None,
            ready: None,
        }
    }

    /// Takes the sockets named by `SWITCHYARD_INHERIT_FDS`, or else by
    /// systemd's variables when `LISTEN_PID` is this process, and removes
    /// those variables from the environment (programs started later must
    /// not see them). Must run before the process opens any file or starts
    /// a thread: the descriptor numbers are trusted to be inherited ones.
    pub fn from_env() -> anyhow::Result<Inherited> {
        let ours = std::env::var(INHERIT_FDS).ok();
        let systemd: Vec<Option<String>> =
            LISTEN_VARS.iter().map(|v| std::env::var(v).ok()).collect();
        std::env::remove_var(INHERIT_FDS);
        for v in LISTEN_VARS {
            std::env::remove_var(v);
        }
        if let Some(spec) = ours {
            return from_predecessor(&spec).with_context(|| {
                format!(
                    "{INHERIT_FDS}=\"{spec}\" (set by switchyard for the process it starts on SIGUSR2; unset it to bind the configured addresses)"
                )
            });
        }
        let (pid, fds, names) = (&systemd[0], &systemd[1], &systemd[2]);
        let Some(fds) = fds else {
            return Ok(Inherited::nothing());
        };
        // Meant for another process (sd_listen_fds(3) ignores them too).
        if pid.as_deref().and_then(|p| p.trim().parse::<u32>().ok()) != Some(std::process::id()) {
            return Ok(Inherited::nothing());
        }
        from_systemd(fds, names.as_deref()).with_context(|| {
            format!(
                "systemd socket activation (LISTEN_FDS={fds}, LISTEN_FDNAMES={})",
                names.as_deref().unwrap_or("unset")
            )
        })
    }

    /// Checks that each inherited socket listens where the config says
    /// (port 0 in the config accepts any port); drops a TLS socket the
    /// config no longer uses.
    pub fn check(&mut self, config: &Config) -> anyhow::Result<()> {
        let fix = match self.from {
            Source::Nobody => return Ok(()),
            Source::Predecessor => "listen addresses change with a restart (stop, then start), not with an upgrade, which keeps the sockets",
            Source::Systemd => "make the socket unit's ListenStream= and the config agree",
        };
        let who = match self.from {
            Source::Systemd => "systemd passed",
            _ => "the previous process handed over",
        };
        let check = |l: &Option<TcpListener>, name: &str, key: &str, want: SocketAddr| {
            let Some(l) = l else { return Ok(()) };
            let got = l
                .local_addr()
                .context("reading an inherited socket's address")?;
            let same = got == want
                || (want.port() == 0 && got.ip() == want.ip())
                || (want.port() == got.port()
                    && want.ip().is_unspecified()
                    && got.ip().is_unspecified());
            ensure!(
                same,
                "the `{name}` socket {who} listens on {got}, but {key} = \"{want}\": {fix}"
            );
            Ok(())
        };
        check(&self.proxy, "proxy", "[proxy] listen", config.proxy.listen)?;
        check(&self.admin, "admin", "[admin] listen", config.admin.listen)?;
        match &config.proxy.tls {
            Some(t) => check(&self.tls, "tls", "[proxy.tls] listen", t.listen)?,
            None => {
                if self.tls.take().is_some() {
                    tracing::warn!(
                        "a `tls` socket was handed over but the config has no [proxy.tls]: closing it"
                    );
                }
            }
        }
        Ok(())
    }
}

fn from_predecessor(spec: &str) -> anyhow::Result<Inherited> {
    let mut out = Inherited {
        from: Source::Predecessor,
        ..Inherited::nothing()
    };
    let mut taken = Vec::new();
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        let (name, fd) = item
            .split_once(':')
            .with_context(|| format!("`{item}` is not NAME:FD"))?;
        let fd: RawFd = fd
            .parse()
            .with_context(|| format!("`{item}`: `{fd}` is not a file descriptor number"))?;
        let owned = take_fd(fd, &mut taken, name)?;
        match name {
            "ready" => out.ready = Some(unix_stream(owned, name, fd)?),
            _ => place(&mut out, name, listener(owned, name, fd)?)?,
        }
    }
    Ok(out)
}

fn from_systemd(fds: &str, names: Option<&str>) -> anyhow::Result<Inherited> {
    let n: RawFd = fds
        .trim()
        .parse()
        .with_context(|| format!("LISTEN_FDS=`{fds}` is not a number"))?;
    ensure!(
        (1..=3).contains(&n),
        "switchyard takes 1 to 3 sockets (proxy, tls, admin), not {n}"
    );
    let names: Vec<&str> = names.map(|s| s.split(':').collect()).unwrap_or_default();
    let by_name = names.len() == n as usize
        && names
            .iter()
            .all(|n| matches!(*n, "proxy" | "tls" | "admin"));
    // Without names: proxy first, then admin; with three, proxy, tls, admin.
    let order: &[&str] = match n {
        1 => &["proxy"],
        2 => &["proxy", "admin"],
        _ => &["proxy", "tls", "admin"],
    };
    let mut out = Inherited {
        from: Source::Systemd,
        ..Inherited::nothing()
    };
    let mut taken = Vec::new();
    for i in 0..n {
        let fd = SD_LISTEN_FDS_START + i;
        let name = if by_name {
            names[i as usize]
        } else {
            order[i as usize]
        };
        let owned = take_fd(fd, &mut taken, name)?;
        place(&mut out, name, listener(owned, name, fd)?)?;
    }
    Ok(out)
}

fn place(out: &mut Inherited, name: &str, l: TcpListener) -> anyhow::Result<()> {
    let slot = match name {
        "proxy" => &mut out.proxy,
        "tls" => &mut out.tls,
        "admin" => &mut out.admin,
        other => bail!("unknown socket name `{other}` (expected proxy, tls or admin)"),
    };
    ensure!(slot.is_none(), "two sockets are named `{name}`");
    *slot = Some(l);
    Ok(())
}

/// Takes ownership of `fd`, a descriptor this process inherited across
/// exec. Each number is taken once, and must be open.
#[allow(unsafe_code)]
fn take_fd(fd: RawFd, taken: &mut Vec<RawFd>, name: &str) -> anyhow::Result<OwnedFd> {
    ensure!(
        fd > 2,
        "fd {fd} ({name}) is standard input, output or error, not a socket"
    );
    ensure!(!taken.contains(&fd), "fd {fd} is named twice");
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .with_context(|| format!("fd {fd} ({name}) is not open in this process"))?;
    taken.push(fd);
    // SAFETY: `fd` is open (its /proc/self/fd entry exists) and is not
    // stdin, stdout or stderr. Nothing else in this process owns it: it was
    // inherited across exec, this runs before the process opens any file or
    // starts a thread (`Inherited::from_env` is called first thing in
    // `switchyard run`), and each number is taken at most once (checked
    // above), so exactly one `OwnedFd` ever closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn listener(fd: OwnedFd, name: &str, n: RawFd) -> anyhow::Result<TcpListener> {
    use socket2::{Socket, Type};
    let s = Socket::from(fd);
    let what = || format!("fd {n} ({name})");
    let tcp = s.local_addr().ok().and_then(|a| a.as_socket()).is_some();
    ensure!(
        tcp && s.r#type().ok() == Some(Type::STREAM),
        "{} is not a TCP socket",
        what()
    );
    ensure!(
        s.is_listener().unwrap_or(false),
        "{} is a TCP socket that does not listen (bind and listen before passing it)",
        what()
    );
    // Not for the programs switchyard starts (pg_dump, a successor).
    s.set_cloexec(true).with_context(what)?;
    Ok(s.into())
}

fn unix_stream(fd: OwnedFd, name: &str, n: RawFd) -> anyhow::Result<UnixStream> {
    use socket2::{Domain, Socket};
    let s = Socket::from(fd);
    ensure!(
        s.domain().ok() == Some(Domain::UNIX),
        "fd {n} ({name}) is not a Unix socket"
    );
    s.set_cloexec(true)
        .with_context(|| format!("fd {n} ({name})"))?;
    Ok(UnixStream::from(OwnedFd::from(s)))
}
