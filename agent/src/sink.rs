//! Token files: written atomically (a temporary file in the same directory,
//! its mode and owner set, fsync, rename), so a reader sees the old token or
//! the new one, never a mix.

use std::io::Write;
use std::path::Path;

use freshtoken::Token;

use crate::config::FileSink;

/// The content of the token file for `token`.
pub fn render(sink: &FileSink, token: &Token) -> String {
    let secret = token.access_token().expose_secret();
    let token_type = if token.token_type().eq_ignore_ascii_case("bearer") {
        "Bearer"
    } else {
        token.token_type()
    };
    let expires_at = token.expires_at().as_secs();
    if let Some(template) = &sink.template {
        return template
            .replace("{token_type}", token_type)
            .replace("{expires_at}", &expires_at.to_string())
            .replace("{token}", secret);
    }
    match sink.format.as_deref() {
        Some("header") => format!("Authorization: {token_type} {secret}\n"),
        Some("json") => {
            let mut json = serde_json::json!({
                "access_token": secret,
                "token_type": token_type,
                "expires_at": expires_at,
            })
            .to_string();
            json.push('\n');
            json
        }
        _ => secret.to_owned(),
    }
}

/// Writes `content` to `path` atomically with `mode` and the owner given.
pub fn write_atomic(
    path: &Path,
    content: &[u8],
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // tempfile creates the file with mode 0600, so the token is never
    // readable by others, even before the mode below is set.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if uid.is_some() || gid.is_some() {
            rustix::fs::fchown(
                tmp.as_file(),
                uid.map(rustix::fs::Uid::from_raw),
                gid.map(rustix::fs::Gid::from_raw),
            )?;
        }
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.write_all(content)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename is durable once the directory is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `token` as `sink` says.
pub fn write(sink: &FileSink, token: &Token) -> std::io::Result<()> {
    let Some(path) = &sink.path else {
        return Ok(());
    };
    let content = render(sink, token);
    write_atomic(
        path,
        content.as_bytes(),
        sink.mode.unwrap_or(0o600),
        sink.uid,
        sink.gid,
    )
}
