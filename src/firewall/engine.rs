//! Installs a rendered plan and tells whether what is installed is still it.
//!
//! After every install the engine lists what the kernel holds (`nft -t list table`, `iptables -S` of our
//! chains, ufw's added rules) and records it with the script in `<root>/run/firewall.json`. Drift is then a plain
//! comparison: the plan renders to another script (the plan changed: a window opened, a credential was issued) or
//! today's listing differs from the recorded one (someone edited our rules). Tools print rules in their own
//! normal form, so comparing listings with listings, never listings with our scripts, has no false alarms.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{FirewallError, Plan, iptables, line_diff, nft, ufw};
use crate::config::Backend;
use crate::sys::firewall as sys;

/// A plan rendered for one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum Script {
    Nft { text: String },
    Iptables { v4: String, v6: String },
    Ufw { commands: Vec<Vec<String>>, text: String },
}

impl Script {
    pub fn render(plan: &Plan, backend: Backend) -> Script {
        match backend {
            Backend::Nft => Script::Nft { text: nft::render(plan) },
            Backend::Iptables => Script::Iptables { v4: iptables::render_v4(plan), v6: iptables::render_v6(plan) },
            Backend::Ufw => Script::Ufw { commands: ufw::render(plan), text: ufw::render_text(plan) },
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Script::Nft { .. } => Backend::Nft,
            Script::Iptables { .. } => Backend::Iptables,
            Script::Ufw { .. } => Backend::Ufw,
        }
    }

    /// The exact rules, as `firewall plan` prints them.
    pub fn text(&self) -> String {
        match self {
            Script::Nft { text } | Script::Ufw { text, .. } => text.clone(),
            Script::Iptables { v4, v6 } => format!("{v4}{v6}"),
        }
    }

    /// `sha256:<hex>` of [`Script::text`]: names a plan in logs and in `status`.
    pub fn hash(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(self.text().as_bytes())))
    }
}

/// What the last install recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub script: Script,
    /// What the kernel listed right after the install.
    pub listing: String,
    pub applied_at: i64,
}

pub fn state_path(root: &Path) -> PathBuf {
    root.join("run").join("firewall.json")
}

fn state_err(path: &Path, why: impl std::fmt::Display) -> FirewallError {
    FirewallError::State { path: path.display().to_string(), why: why.to_string() }
}

pub fn load_state(root: &Path) -> Result<Option<State>, FirewallError> {
    let path = state_path(root);
    match crate::sys::fs::read_optional(&path).map_err(|e| state_err(&path, e))? {
        Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| state_err(&path, e)),
        None => Ok(None),
    }
}

fn save_state(root: &Path, state: Option<&State>) -> Result<(), FirewallError> {
    let path = state_path(root);
    match state {
        Some(s) => {
            let text = serde_json::to_string_pretty(s).map_err(|e| state_err(&path, e))?;
            // `run/` exists once a service ran; a first `firewall apply` by hand may come before that.
            if let Some(dir) = path.parent().filter(|d| !d.is_dir()) {
                crate::sys::fs::ensure_dir(dir, 0o755).map_err(|e| state_err(&path, e))?;
            }
            crate::sys::fs::write_atomic(&path, text.as_bytes(), 0o600).map_err(|e| state_err(&path, e))
        }
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(state_err(&path, e)),
            _ => Ok(()),
        },
    }
}

fn tool(backend: Backend) -> impl Fn(crate::sys::cmd::CmdError) -> FirewallError {
    move |source| FirewallError::Tool { backend: backend.as_str(), source }
}

/// What `backend` has installed of ours now (`None`: nothing).
pub fn listing(backend: Backend) -> Result<Option<String>, FirewallError> {
    let err = tool(backend);
    match backend {
        Backend::Nft => sys::nft_list(nft::TABLE).map_err(err),
        Backend::Iptables => {
            // Our chains and the jumps into them: every listed line that names a CASVPN- chain.
            let mut out = String::new();
            for (v6, table) in [(false, "nat"), (false, "filter"), (true, "filter")] {
                let all = sys::iptables_list_table(v6, table).map_err(&err)?;
                for l in all.lines().filter(|l| l.contains("CASVPN-")) {
                    out.push_str(&format!("{} {table} {l}\n", if v6 { "v6" } else { "v4" }));
                }
            }
            Ok((!out.is_empty()).then_some(out))
        }
        Backend::Ufw => {
            let out = sys::ufw(&["show".into(), "added".into()]).map_err(err)?;
            let ours: Vec<&str> = out.lines().filter(|l| l.contains("cas-vpn")).collect();
            Ok((!ours.is_empty()).then(|| ours.join("\n") + "\n"))
        }
    }
}

/// Installs `script` (replacing what this backend had of ours) and records it. `previous` is what the last
/// install recorded (ufw needs it to take back rules the new plan no longer has).
pub fn install(root: &Path, script: &Script, previous: Option<&State>, now: i64) -> Result<State, FirewallError> {
    let backend = script.backend();
    let err = tool(backend);
    match script {
        Script::Nft { text } => sys::nft_apply(text).map_err(err)?,
        Script::Iptables { v4, v6 } => {
            sys::iptables_restore(false, v4).map_err(&err)?;
            sys::iptables_restore(true, v6).map_err(&err)?;
            for (table, chain, target) in iptables::HOOKS_V4 {
                sys::iptables_ensure_jump(false, table, chain, target).map_err(&err)?;
            }
            for (table, chain, target) in iptables::HOOKS_V6 {
                sys::iptables_ensure_jump(true, table, chain, target).map_err(&err)?;
            }
        }
        Script::Ufw { commands, .. } => {
            if let Some(Script::Ufw { commands: old, .. }) = previous.map(|p| &p.script) {
                for gone in old.iter().filter(|c| !commands.contains(c)) {
                    // `ufw delete RULE` takes the rule without its comment.
                    let rule: Vec<String> = gone.iter().take_while(|w| *w != "comment").cloned().collect();
                    let mut args = vec!["delete".to_owned()];
                    args.extend(rule);
                    sys::ufw(&args).map_err(&err)?;
                }
            }
            for c in commands {
                sys::ufw(c).map_err(&err)?;
            }
        }
    }
    let state = State { script: script.clone(), listing: listing(backend)?.unwrap_or_default(), applied_at: now };
    save_state(root, Some(&state))?;
    Ok(state)
}

/// Removes everything of ours from `backend` and forgets the recorded state.
pub fn remove(root: &Path, backend: Backend, previous: Option<&State>) -> Result<(), FirewallError> {
    let err = tool(backend);
    match backend {
        Backend::Nft => sys::nft_apply(&nft::render_removal()).map_err(err)?,
        Backend::Iptables => {
            for (v6, chains, hooks) in [
                (false, &iptables::CHAINS_V4[..], &iptables::HOOKS_V4[..]),
                (true, &iptables::CHAINS_V6[..], &iptables::HOOKS_V6[..]),
            ] {
                for (table, chain, target) in hooks {
                    sys::iptables_remove(v6, table, chain, target);
                }
                for (table, chain) in chains {
                    sys::iptables_drop_chain(v6, table, chain);
                }
            }
        }
        Backend::Ufw => {
            if let Some(Script::Ufw { commands, .. }) = previous.map(|p| &p.script) {
                for c in commands {
                    let mut args = vec!["delete".to_owned()];
                    args.extend(c.iter().take_while(|w| *w != "comment").cloned());
                    sys::ufw(&args).map_err(&err)?;
                }
            }
        }
    }
    save_state(root, None)
}

/// Installed rules against the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "drift", rename_all = "kebab-case")]
pub enum Drift {
    /// What is installed is the plan, untouched since it was installed.
    InForce,
    /// Nothing of ours is installed.
    NotInstalled,
    /// Rules of ours are installed, but no install was recorded (the state file is gone).
    Unrecorded,
    /// Another plan is installed (the plan changed since): `diff` from the installed script to the planned one.
    OtherPlan { diff: Vec<String> },
    /// Our rules were changed by hand: `diff` from the recorded listing to today's.
    Edited { diff: Vec<String> },
}

impl Drift {
    pub fn in_force(&self) -> bool {
        matches!(self, Drift::InForce)
    }

    /// One line for logs and `status`.
    pub fn summary(&self) -> String {
        match self {
            Drift::InForce => "installed rules are the plan".into(),
            Drift::NotInstalled => "nothing is installed".into(),
            Drift::Unrecorded => "rules are installed but no install was recorded".into(),
            Drift::OtherPlan { diff } => format!("another plan is installed ({} lines differ)", diff.len()),
            Drift::Edited { diff } => format!("installed rules were changed by hand: {}", diff.join(" | ")),
        }
    }
}

/// Compares what is installed with `planned`.
pub fn drift(root: &Path, planned: &Script) -> Result<Drift, FirewallError> {
    let state = load_state(root)?;
    let now = listing(planned.backend())?;
    Ok(compare(state.as_ref(), now.as_deref(), planned))
}

/// The pure part of [`drift`].
pub fn compare(state: Option<&State>, listing_now: Option<&str>, planned: &Script) -> Drift {
    match (state.filter(|s| s.script.backend() == planned.backend()), listing_now) {
        (None, None) => Drift::NotInstalled,
        (None, Some(_)) => Drift::Unrecorded,
        (Some(s), now) if s.listing != now.unwrap_or("") => {
            Drift::Edited { diff: line_diff(&s.listing, now.unwrap_or("")) }
        }
        (Some(s), _) if s.script != *planned => Drift::OtherPlan { diff: line_diff(&s.script.text(), &planned.text()) },
        (Some(_), _) => Drift::InForce,
    }
}
