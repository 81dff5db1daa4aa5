//! Giving up root once the listeners are bound.
//!
//! Port 135 is privileged. rpcpin either starts as root and switches to `process.user`
//! after binding, or runs as an ordinary user holding only `CAP_NET_BIND_SERVICE` (systemd's
//! `AmbientCapabilities=`, `setcap cap_net_bind_service=+ep`, or a container's capability
//! set), with `process.user` unset.

use anyhow::{bail, Context};
use nix::unistd::{getuid, setgid, setgroups, setuid, User};
use tracing::info;

/// Switches the whole process to `name` and its primary group, dropping supplementary
/// groups. glibc applies the change to every thread.
pub fn drop_to(name: &str) -> anyhow::Result<()> {
    let user = User::from_name(name)
        .with_context(|| format!("process.user: cannot look up {name:?}"))?
        .with_context(|| format!("process.user: no user {name:?}"))?;
    if !getuid().is_root() {
        bail!(
            "process.user: rpcpin runs as uid {}, not root, so it cannot switch to {name:?}",
            getuid()
        );
    }
    setgroups(&[user.gid]).context("process.user: setgroups")?;
    setgid(user.gid).context("process.user: setgid")?;
    setuid(user.uid).context("process.user: setuid")?;
    if setuid(nix::unistd::Uid::from_raw(0)).is_ok() {
        bail!("process.user: root could be regained after switching to {name:?}");
    }
    info!(
        event = "privileges_dropped",
        user = name,
        uid = user.uid.as_raw(),
        gid = user.gid.as_raw()
    );
    Ok(())
}
