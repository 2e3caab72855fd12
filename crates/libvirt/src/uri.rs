//! Which libvirt URI to use: `--connect`, else `LIBVIRT_DEFAULT_URI`, else `qemu:///system`.

/// The URI used when neither `--connect` nor `LIBVIRT_DEFAULT_URI` names one.
pub const DEFAULT_URI: &str = "qemu:///system";
/// The environment variable libvirt's own tools read for the default URI.
pub const URI_ENV: &str = "LIBVIRT_DEFAULT_URI";

/// The URI to use: `explicit` (`--connect`), else `env` (`LIBVIRT_DEFAULT_URI`), else
/// [`DEFAULT_URI`]. Empty values count as unset.
pub fn resolve_uri(explicit: Option<&str>, env: Option<&str>) -> String {
    explicit
        .filter(|s| !s.is_empty())
        .or(env.filter(|s| !s.is_empty()))
        .unwrap_or(DEFAULT_URI)
        .to_string()
}

/// [`resolve_uri`] with the process environment.
pub fn uri_from_env(explicit: Option<&str>) -> String {
    let env = std::env::var(URI_ENV).ok();
    resolve_uri(explicit, env.as_deref())
}
