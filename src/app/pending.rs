//! Server-made profiles waiting in `pki/pending/` for delivery through the gate, brought back in line with the
//! store after a crash (invariant 9).

use super::{AppError, Ctx};
use crate::domain::{Kind, Name};

/// Brings `pki/pending/` back in line with the store after a crash (invariant 9). A batch stages its
/// profiles, commits, then renames them: a kill -9 after the commit leaves temp files whose terminals exist (rolled
/// forward: renamed into place) and one before it leaves temp files nobody refers to (rolled back: deleted). A
/// profile whose terminal is gone or revoked is deleted too. Returns (rolled forward, removed).
pub async fn recover_pending(ctx: &Ctx) -> Result<(usize, usize), AppError> {
    let dir = ctx.pki.pending_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok((0, 0)) };
    let (mut forward, mut removed) = (0, 0);
    for e in entries.flatten() {
        let path = e.path();
        let (target, is_temp) = match crate::sys::fs::temp_target(&path) {
            Some(t) => (t, true),
            None => (path.clone(), false),
        };
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ovpn"))
            .and_then(|n| n.parse::<Name>().ok());
        let wanted = match &name {
            Some(n) => ctx
                .store
                .credential_by_name(n)
                .await?
                .is_some_and(|c| c.kind == Kind::Terminal && c.revoked_at.is_none() && c.paired_at.is_none()),
            None => false,
        };
        let io = |source| crate::sys::fs::FsError::Write { path: path.clone(), source };
        if wanted && is_temp && !target.exists() {
            std::fs::rename(&path, &target).map_err(io)?;
            forward += 1;
        } else if !wanted || is_temp {
            std::fs::remove_file(&path).map_err(io)?;
            removed += 1;
        }
    }
    if forward + removed > 0 {
        tracing::warn!(forward, removed, "recovered pending profiles after an interrupted run");
    }
    Ok((forward, removed))
}
