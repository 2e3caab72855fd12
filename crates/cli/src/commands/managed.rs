//! Commands that need live state from gvm-vgpud: definitions, retune, freeze/thaw,
//! mdevctl import, reconcile, and the daemon's view of `show` and `list --defined`.
//!
//! Every call goes through `gvm-client`; when the daemon is not running the client's
//! error says so and how to start it, and the command exits 1.

use std::io::Write;

use anyhow::{Context as _, Result};
use gvm_catalog::ByteSize;
use gvm_client::Client;
use gvm_proto::{
    DefineParams, Overrides, SetMode, SetParams, Source, VgpuDetail, VgpuInfo, VgpuState,
};
use uuid::Uuid;

use super::owner_table::OwnerTable;
use super::shapes::VgpuJson;
use super::write_json;
use crate::cli::KnobArgs;
use crate::context::Context;
use crate::table::Table;

/// Connect to the daemon serving this root, for a command the daemon answers: `--catalog`
/// is refused (see [`refuse_catalog_flag`]).
pub fn client(ctx: &Context) -> Result<Client> {
    let mut c = Client::connect_host(&ctx.host)?;
    refuse_catalog_flag(ctx, &mut c)?;
    Ok(c)
}

/// Fail when `--catalog` was given to a command the daemon answers: the daemon never sees
/// the flag, so the command would run on the daemon's catalog while the operator thinks it
/// uses theirs. The error names the daemon's catalog as its `ping` reports it and how to
/// change it.
pub fn refuse_catalog_flag(ctx: &Context, c: &mut Client) -> Result<()> {
    if ctx.catalog_flags.is_empty() {
        return Ok(());
    }
    let given = ctx
        .catalog_flags
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let theirs = match c.ping().map(|p| p.catalog) {
        Ok(Some(st)) if st.dirs.is_empty() => "the built-in types only".to_string(),
        Ok(Some(st)) => format!("the built-in types overridden by {}", st.dirs.join(", ")),
        Ok(None) | Err(_) => "its own directories (this gvm-vgpud does not say which)".into(),
    };
    anyhow::bail!(
        "--catalog {given} does not reach gvm-vgpud, which answers this command: it reads \
         its own catalog, {theirs}. To change that catalog, edit a file there and run \
         `systemctl reload gvm-vgpud` (or send gvm-vgpud SIGHUP; `gvm-vgpu status` shows \
         what it loaded); drop --catalog here. --catalog applies to parents, types, create, \
         remove, and list and show while gvm-vgpud is not running"
    )
}

/// `gvm-vgpu status`.
pub fn status(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    let pong = client(ctx)?.ping()?;
    if ctx.json {
        return write_json(out, "status", &pong);
    }
    writeln!(
        out,
        "gvm-vgpud {} (protocol {}) serving {}: {} vGPU{}",
        pong.version,
        pong.protocol,
        pong.root,
        pong.vgpus,
        if pong.vgpus == 1 { "" } else { "s" }
    )?;
    match &pong.catalog {
        Some(cat) => catalog_status(cat, out)?,
        None => writeln!(out, "catalog: not reported by this gvm-vgpud")?,
    }
    match &pong.config {
        Some(cfg) => config_status(cfg, out),
        None => Ok(writeln!(out, "config: not reported by this gvm-vgpud")?),
    }
}

/// The catalog lines of `status`.
fn catalog_status(cat: &gvm_proto::CatalogStatus, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "catalog: loaded from {} at {} (reloads: {})",
        cat.files.join(", "),
        utc_text(cat.loaded_at),
        cat.reloads
    )?;
    if cat.dirs.is_empty() {
        writeln!(out, "  read from: the built-in types only")?;
    } else {
        writeln!(
            out,
            "  read from: the built-in types, then {}",
            cat.dirs.join(", ")
        )?;
    }
    if let Some(f) = &cat.last_reload_failed {
        writeln!(
            out,
            "last reload failed at {}: {}\n  the catalog loaded at {} stays in use: fix the \
             file and run `systemctl reload gvm-vgpud` (or send gvm-vgpud SIGHUP)",
            utc_text(f.at),
            f.error,
            utc_text(cat.loaded_at)
        )?;
    }
    Ok(())
}

/// The config-file lines of `status`: the file, and what its last reload did.
fn config_status(cfg: &gvm_proto::ConfigStatus, out: &mut dyn Write) -> Result<()> {
    if cfg.exists {
        writeln!(out, "config: {} (reloads: {})", cfg.file, cfg.reloads)?;
    } else {
        writeln!(
            out,
            "config: {} is not there: the defaults and the command line apply (reloads: {})",
            cfg.file, cfg.reloads
        )?;
    }
    let Some(r) = &cfg.last_reload else {
        return Ok(());
    };
    if let Some(e) = &r.error {
        writeln!(
            out,
            "  last reload at {} was refused, the settings in use stay: {e}\n  fix the file \
             and run `systemctl reload gvm-vgpud` (or send gvm-vgpud SIGHUP)",
            utc_text(r.at)
        )?;
        return Ok(());
    }
    let list = |keys: &[String]| {
        if keys.is_empty() {
            "nothing".to_string()
        } else {
            keys.join(", ")
        }
    };
    writeln!(
        out,
        "  last reload at {} applied {}",
        utc_text(r.at),
        list(&r.applied)
    )?;
    if !r.need_restart.is_empty() {
        writeln!(
            out,
            "  changed but not applied until a restart (`systemctl restart gvm-vgpud`): {}",
            list(&r.need_restart)
        )?;
    }
    Ok(())
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_text(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm, for days since 1970-01-01).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

pub(crate) fn limit_text(bytes: u64) -> String {
    if bytes == u64::MAX {
        "unlimited".into()
    } else {
        ByteSize(bytes).to_string()
    }
}

fn source_text(s: Source) -> &'static str {
    match s {
        Source::Default => "GVM default",
        Source::Type => "type",
        Source::Persistent => "persistent override",
        Source::Live => "live override",
    }
}

fn overrides(knobs: &KnobArgs) -> Overrides {
    Overrides {
        memory_limit: knobs.memory_limit,
        priority: knobs.priority,
        share: knobs.share,
    }
}

/// `gvm-vgpu define`.
/// What `define` stores beside the type and parent.
#[derive(Debug, Clone, Default)]
pub struct DefineHow {
    /// `--uuid`.
    pub uuid: Option<Uuid>,
    /// `--autostart`.
    pub autostart: bool,
    /// `--owner-uid`.
    pub owner_uids: Vec<u32>,
}

pub fn define(
    ctx: &Context,
    type_name: &str,
    parent: &str,
    how: DefineHow,
    knobs: &KnobArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let def = client(ctx)?
        .define(DefineParams {
            uuid: how.uuid,
            parent: parent.to_string(),
            type_name: type_name.to_string(),
            autostart: how.autostart,
            overrides: overrides(knobs),
            owner_uids: how.owner_uids,
            force: knobs.force,
        })
        .with_context(|| format!("cannot define a vGPU of type {type_name} on {parent}"))?;
    if ctx.json {
        return write_json(out, "definition", &def);
    }
    writeln!(
        out,
        "Defined vGPU {} ({} on {}{}); `gvm-vgpu start {}` creates it.",
        def.uuid,
        def.type_name.as_deref().unwrap_or(&def.mdev_type),
        def.parent,
        if def.autostart { ", autostart" } else { "" },
        def.uuid
    )?;
    Ok(())
}

/// `gvm-vgpu define --from FILE [--start]`.
pub fn define_from(
    ctx: &Context,
    file: &std::path::Path,
    start: bool,
    knobs: &KnobArgs,
    out: &mut dyn Write,
) -> Result<()> {
    if !overrides(knobs).is_empty() {
        anyhow::bail!(
            "--from takes the overrides from FILE: give `overrides` per item there, \
             not --memory-limit/--priority/--share"
        );
    }
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the definitions from standard input")?;
        s
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the definitions file {}", file.display()))?
    };
    let mut items = parse_definitions(file, &text)?;
    if knobs.force {
        for item in &mut items {
            item.force = true;
        }
    }
    let report = client(ctx)?
        .define_batch(items, start)
        .with_context(|| format!("cannot define the vGPUs of {}", file.display()))?;
    let failed = (!report.failed.is_empty()).then(|| {
        format!(
            "{} of {} vGPUs were defined but not started",
            report.failed.len(),
            report.defined.len()
        )
    });
    if ctx.json {
        // One object on stdout: a partial failure carries the report in the error object.
        return match failed {
            None => write_json(out, "batch", &report),
            Some(message) => Err(crate::json_error::PartlyDone {
                key: "batch",
                done: serde_json::to_value(&report)?,
                message,
            }
            .into()),
        };
    } else {
        for def in &report.defined {
            writeln!(
                out,
                "Defined vGPU {} ({} on {}{}){}.",
                def.uuid,
                def.type_name.as_deref().unwrap_or(&def.mdev_type),
                def.parent,
                if def.autostart { ", autostart" } else { "" },
                if report.started.contains(&def.uuid) {
                    ", started"
                } else {
                    ""
                }
            )?;
        }
        for f in &report.failed {
            writeln!(out, "Could not start vGPU {}: {}", f.uuid, f.error)?;
        }
    }
    match failed {
        Some(message) => Err(anyhow::anyhow!(message)),
        None => Ok(()),
    }
}

/// The definitions of a `define --from` file: a JSON array of `define` params (`parent`,
/// `type`, `uuid`?, `autostart`?, `overrides`?), each checked on its own so that an error
/// (an unknown field such as `autostrat` included) names the item's index in the file. `file`
/// only names the file in messages. What the file holds is quoted at most as an excerpt: a
/// JSON parser's complaint is cut to [`MAX_QUOTE_BYTES`] bytes.
pub fn parse_definitions(file: &std::path::Path, text: &str) -> Result<Vec<DefineParams>> {
    let shape = || {
        format!(
            "{} is not a JSON array of definitions ({{\"parent\": ..., \"type\": ..., \
             \"uuid\"?, \"autostart\"?, \"overrides\"?}})",
            file.display()
        )
    };
    let values: Vec<serde_json::Value> = serde_json::from_str(text)
        .map_err(bounded)
        .with_context(shape)?;
    let items = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value::<DefineParams>(v)
                .map_err(bounded)
                .with_context(|| format!("item {i}"))
                .with_context(shape)
        })
        .collect::<Result<Vec<DefineParams>>>()?;
    if items.is_empty() {
        anyhow::bail!("{} lists no definitions", file.display());
    }
    Ok(items)
}

/// Most bytes of a JSON parser's complaint about a `--from` file that a message quotes.
pub const MAX_QUOTE_BYTES: usize = 400;

/// A JSON parser's complaint, its middle cut when longer than [`MAX_QUOTE_BYTES`] (it may
/// quote a value or key of the file, which can be megabytes long): its start says what is
/// wrong, its end what was expected and where.
fn bounded(e: serde_json::Error) -> anyhow::Error {
    let s = e.to_string();
    if s.len() <= MAX_QUOTE_BYTES {
        return anyhow::Error::new(e);
    }
    anyhow::anyhow!("{}", gvm_error_chain::clip_middle(&s, MAX_QUOTE_BYTES))
}

/// `gvm-vgpu undefine`.
pub fn undefine(ctx: &Context, uuid: &Uuid, out: &mut dyn Write) -> Result<()> {
    let def = client(ctx)?.undefine(&uuid.to_string())?;
    if ctx.json {
        return write_json(out, "definition", &def);
    }
    writeln!(out, "Undefined vGPU {}.", def.uuid)?;
    Ok(())
}

/// `gvm-vgpu start` / `stop`.
pub fn start_stop(ctx: &Context, uuid: &Uuid, start: bool, out: &mut dyn Write) -> Result<()> {
    let mut c = client(ctx)?;
    let info = if start {
        c.start(&uuid.to_string())?
    } else {
        c.stop(&uuid.to_string())?
    };
    if ctx.json {
        return write_json(out, "vgpu", &info);
    }
    let verb = if start { "Started" } else { "Stopped" };
    writeln!(out, "{verb} vGPU {} on {}.", info.uuid, info.parent)?;
    Ok(())
}

/// How often `stop --wait` asks again while the vGPU is held.
const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// `gvm-vgpu stop <uuid> [--wait]`. The daemon refuses a held vGPU (a conflict naming the
/// holders); with `--wait` this says once on stderr whom it waits for and asks again until
/// the daemon stops it, so the wait is here, interruptible, and never in the daemon.
pub fn stop(ctx: &Context, uuid: &Uuid, wait: bool, out: &mut dyn Write) -> Result<()> {
    if !wait {
        return start_stop(ctx, uuid, false, out);
    }
    let mut c = client(ctx)?;
    let mut announced = false;
    let info = loop {
        match c.stop(&uuid.to_string()) {
            Ok(info) => break info,
            // A stop's only conflict is a busy device (EBUSY): held.
            Err(e) if e.code() == Some(gvm_proto::ErrorCode::Conflict) => {
                if !announced {
                    let holders = ctx
                        .mdev
                        .holders(uuid)
                        .map(|s| s.holders)
                        .unwrap_or_default();
                    let whom = if holders.is_empty() {
                        format!("its holders (gvm-vgpud: {e})")
                    } else {
                        let names: Vec<String> = holders.iter().map(ToString::to_string).collect();
                        names.join(", ")
                    };
                    eprintln!(
                        "gvm-vgpu: vGPU {uuid} is held open: waiting for {whom} to let go, \
                         then stopping it (Ctrl-C ends this wait and changes nothing)"
                    );
                    announced = true;
                }
                std::thread::sleep(STOP_POLL);
            }
            Err(e) => return Err(e.into()),
        }
    };
    if ctx.json {
        return write_json(out, "vgpu", &info);
    }
    writeln!(out, "Stopped vGPU {} on {}.", info.uuid, info.parent)?;
    Ok(())
}

/// `gvm-vgpu list --defined`.
pub fn list_defined(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    let all: Vec<VgpuInfo> = client(ctx)?
        .list(true)?
        .into_iter()
        .filter(|v| v.defined)
        .collect();
    if ctx.json {
        return write_json(out, "vgpus", &all);
    }
    if all.is_empty() {
        writeln!(out, "No vGPU definitions.")?;
        return Ok(());
    }
    let mut table = Table::new(&[
        "UUID",
        "PARENT",
        "TYPE",
        "STATE",
        "AUTOSTART",
        "MEMORY",
        "PRIO",
    ]);
    for v in &all {
        table.row(vec![
            v.uuid.to_string(),
            v.parent.clone(),
            v.type_name.clone().unwrap_or_else(|| v.mdev_type.clone()),
            match v.state {
                VgpuState::Running => "running",
                VgpuState::Stopped => "stopped",
            }
            .into(),
            if v.autostart { "yes" } else { "no" }.into(),
            limit_text(v.knobs.memory_limit),
            v.knobs.priority.to_string(),
        ]);
    }
    table.write(out)?;
    Ok(())
}

/// `gvm-vgpu set`.
pub fn set(
    ctx: &Context,
    target: &str,
    knobs: &KnobArgs,
    clear: bool,
    mode: SetMode,
    out: &mut dyn Write,
) -> Result<()> {
    if knobs.memory_limit.is_none() && knobs.priority.is_none() && knobs.share.is_none() && !clear {
        anyhow::bail!(
            "nothing to set: give --memory-limit, --priority, --share or --clear (see `gvm-vgpu set --help`)"
        );
    }
    let details = client(ctx)?
        .set(SetParams {
            target: target.to_string(),
            memory_limit: knobs.memory_limit,
            priority: knobs.priority,
            share: knobs.share,
            clear,
            mode,
            force: knobs.force,
        })
        .with_context(|| format!("cannot retune {target}"))?;
    if ctx.json {
        let shapes: Vec<VgpuJson<'_>> = details.iter().map(|d| VgpuJson::of(d, None)).collect();
        return write_json(out, "vgpus", &shapes);
    }
    for d in &details {
        writeln!(
            out,
            "vGPU {}: memory {} ({}), priority {} ({}), {} owner process(es) updated.",
            d.info.uuid,
            limit_text(d.info.knobs.memory_limit),
            source_text(d.sources.memory_limit),
            d.info.knobs.priority,
            source_text(d.sources.priority),
            d.owners.len()
        )?;
    }
    Ok(())
}

/// `gvm-vgpu freeze` / `thaw`.
pub fn freeze_thaw(ctx: &Context, target: &str, freeze: bool, out: &mut dyn Write) -> Result<()> {
    let mut c = client(ctx)?;
    let infos = if freeze {
        c.freeze(target)?
    } else {
        c.thaw(target)?
    };
    if ctx.json {
        return write_json(out, "vgpus", &infos);
    }
    for v in &infos {
        writeln!(
            out,
            "{} vGPU {} ({} of {} gcgroups frozen).",
            if freeze { "Froze" } else { "Thawed" },
            v.uuid,
            v.totals.frozen_gcgroups,
            v.totals.gcgroups
        )?;
    }
    Ok(())
}

/// `gvm-vgpu import-mdevctl [--dry-run] [--remove-source]`.
pub fn import_mdevctl(
    ctx: &Context,
    params: gvm_proto::ImportParams,
    out: &mut dyn Write,
) -> Result<()> {
    let dry_run = params.dry_run;
    let report = client(ctx)?.import_mdevctl(params)?;
    let failed = report
        .mdevctl_sources
        .iter()
        .filter(|s| s.error.is_some())
        .count();
    if ctx.json {
        if failed == 0 {
            return write_json(out, "import", &report);
        }
    } else {
        let verb = if dry_run { "Would import" } else { "Imported" };
        for d in &report.imported {
            writeln!(out, "{verb} {} ({} on {}).", d.uuid, d.mdev_type, d.parent)?;
        }
        for s in &report.skipped {
            writeln!(out, "Skipped: {s}")?;
        }
        for s in &report.mdevctl_sources {
            writeln!(out, "{}", handover_text(s, dry_run))?;
        }
        if report.imported.is_empty() && report.skipped.is_empty() {
            writeln!(
                out,
                "No mdevctl definitions under {}.",
                ctx.host.mdevctl_config_dir().display()
            )?;
        }
    }
    if failed > 0 {
        let message = format!(
            "{failed} mdevctl definition{} could not be removed; gvm-vgpu's definitions are \
             stored and stay: run the `mdevctl undefine` commands {}",
            if failed == 1 { "" } else { "s" },
            if ctx.json {
                "in `import.mdevctl_sources`"
            } else {
                "above"
            }
        );
        if ctx.json {
            // One object on stdout: the report rides in the error object.
            return Err(crate::json_error::PartlyDone {
                key: "import",
                done: serde_json::to_value(&report)?,
                message,
            }
            .into());
        }
        anyhow::bail!(message);
    }
    Ok(())
}

/// What `import-mdevctl` says about an mdevctl definition of a vGPU gvm-vgpu defines too:
/// removed, or what to run so that only one tool defines it.
fn handover_text(s: &gvm_proto::MdevctlSource, dry_run: bool) -> String {
    let undefine = format!("`mdevctl undefine --uuid {}` (or `rm {}`)", s.uuid, s.path);
    match (&s.error, s.removed) {
        (_, true) => format!("Removed mdevctl's definition {} of {}.", s.path, s.uuid),
        (Some(e), false) => format!(
            "Error: {e}: gvm-vgpu's definition of {} stays; remove mdevctl's with {undefine}.",
            s.uuid
        ),
        (None, false) if dry_run => format!(
            "mdevctl defines {} too ({}); after the import, run {undefine}, or import with \
             --remove-source.",
            s.uuid, s.path
        ),
        (None, false) => format!(
            "mdevctl still defines {} ({}): both would create it; run {undefine}, or \
             `gvm-vgpu import-mdevctl --remove-source`.",
            s.uuid, s.path
        ),
    }
}

/// `gvm-vgpu reconcile`.
pub fn reconcile(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    let report = client(ctx)?.reconcile()?;
    if ctx.json {
        return write_json(out, "reconcile", &report);
    }
    writeln!(
        out,
        "Adopted {}, autostarted {}, unmanaged {}, {} knob writes.",
        report.adopted.len(),
        report.autostarted.len(),
        report.unmanaged.len(),
        report.writes
    )?;
    for d in &report.drift {
        writeln!(
            out,
            "Drift: vGPU {} pid {} GPU {} {}: found {}, set back to {}.",
            d.uuid,
            d.pid,
            super::gpu_label(d.gpu, d.pci.as_deref(), Some(d.gvm_index)),
            d.knob,
            d.found,
            d.wanted
        )?;
    }
    for e in &report.errors {
        writeln!(out, "Error: {e}")?;
    }
    Ok(())
}

/// `gvm-vgpu show` through the daemon.
pub fn show(ctx: &Context, detail: &VgpuDetail, out: &mut dyn Write) -> Result<()> {
    if ctx.json {
        return write_json(out, "vgpu", &VgpuJson::of(detail, None));
    }
    let v = &detail.info;
    writeln!(out, "vGPU {}", v.uuid)?;
    writeln!(out, "  parent:       {}", v.parent)?;
    if v.kind == gvm_proto::VgpuKind::Vf {
        writeln!(
            out,
            "  vf:           {} (SR-IOV virtual function)",
            v.vf.as_deref().unwrap_or("- (not running)")
        )?;
    }
    writeln!(out, "  kernel type:  {}", v.mdev_type)?;
    match &v.type_name {
        Some(t) => writeln!(out, "  catalog type: {t}")?,
        None => writeln!(
            out,
            "  catalog type: none: unmanaged, its owners are not touched"
        )?,
    }
    writeln!(
        out,
        "  state:        {}{}{}",
        match v.state {
            VgpuState::Running => "running",
            VgpuState::Stopped => "stopped (defined)",
        },
        if v.defined { ", defined" } else { "" },
        if v.autostart { ", autostart" } else { "" }
    )?;
    if let Some(domain) = &v.domain {
        writeln!(out, "  domain:       {domain}")?;
    }
    writeln!(
        out,
        "  memory limit: {} (from {})",
        limit_text(v.knobs.memory_limit),
        source_text(detail.sources.memory_limit)
    )?;
    writeln!(
        out,
        "  priority:     {} (from {})",
        v.knobs.priority,
        source_text(detail.sources.priority)
    )?;
    if let Some(share) = v.knobs.share {
        writeln!(
            out,
            "  share:        {share:.3} (from {})",
            source_text(detail.sources.share)
        )?;
    }
    writeln!(
        out,
        "  frozen:       {}",
        if v.knobs.frozen { "yes" } else { "no" }
    )?;
    let t = &v.totals;
    writeln!(
        out,
        "  totals:       memory {}, swapped {}, kernels {} submitted / {} ended / {} pending",
        ByteSize(t.memory_current),
        ByteSize(t.swap_current),
        t.kernels_submitted,
        t.kernels_ended,
        t.kernels_pending
    )?;
    if detail.owners.is_empty() {
        writeln!(
            out,
            "  owners:       none yet (limits are applied when one registers with GVM)"
        )?;
    } else {
        writeln!(out, "  owners (GVM gcgroups):")?;
        OwnerTable::of_daemon_owners(&detail.owners).write(out)?;
    }
    if let Some(g) = &detail.guest {
        write_guest_enforcement(out, g)?;
    }
    if let Some(h) = &detail.held_by {
        writeln!(out, "  held by:      {h}")?;
    }
    if let Some(fb) = detail.nvidia_fb_usage_bytes {
        writeln!(
            out,
            "  framebuffer:  {} in use (NVIDIA's vGPU manager, NVML)",
            ByteSize(fb)
        )?;
    }
    if !detail.info.owner_uids.is_empty() {
        let uids: Vec<String> = detail.info.owner_uids.iter().map(u32::to_string).collect();
        writeln!(
            out,
            "  claimable by: uid {} (besides root, libvirt's QEMU user and gvm-vgpud --owner-uid)",
            uids.join(", ")
        )?;
    }
    for r in &detail.refused_claims {
        let uid = r
            .uid
            .map_or("unknown uid".to_string(), |u| format!("uid {u}"));
        writeln!(
            out,
            "  refused:      pid {} ({uid}) claims this vGPU by {:?} but may not own it: allow the user with `gvm-vgpu define --owner-uid` or gvm-vgpud --owner-uid",
            r.pid, r.rule
        )?;
    }
    Ok(())
}

/// The `show` lines about a VM's guest agent: what reaches the guest and its processes.
fn write_guest_enforcement(out: &mut dyn Write, g: &gvm_proto::GuestEnforcement) -> Result<()> {
    let link = if g.connected {
        "connected"
    } else {
        "not connected"
    };
    if g.protocol < 2 {
        writeln!(
            out,
            "  enforcement:  none (agent v1, {link}): the guest reports stats only; update its gvm-vgpu-agent"
        )?;
        return Ok(());
    }
    let state = match (g.generation_sent, g.generation_acked) {
        (None, _) => "no state sent yet".to_string(),
        (Some(s), Some(a)) if s == a => format!("state {s} acknowledged"),
        (Some(s), Some(a)) => format!("state {s} sent, {a} acknowledged last"),
        (Some(s), None) => format!("state {s} sent, not acknowledged yet"),
    };
    let frozen = match (g.frozen_reached, g.in_flight) {
        (Some(true), _) => ", every process held".to_string(),
        (Some(false), Some(n)) if n > 0 => format!(", {n} kernels in flight"),
        _ => String::new(),
    };
    writeln!(
        out,
        "  enforcement:  guest agent (protocol {}, {link}): {state}{frozen}",
        g.protocol
    )?;
    if g.forged_acks > 0 {
        writeln!(
            out,
            "  warning:      the guest acknowledged {} states that were never sent (ignored)",
            g.forged_acks
        )?;
    }
    if g.processes.is_empty() {
        return Ok(());
    }
    writeln!(out, "  guest processes (source guest):")?;
    writeln!(
        out,
        "    {:>8}  {:<16} {:>10} {:>10} {:>10} {:>10} {:>8}  BUSY",
        "PID", "NAME", "MEMORY", "SWAP", "SUBMITTED", "ENDED", "PENDING"
    )?;
    for p in &g.processes {
        writeln!(
            out,
            "    {:>8}  {:<16} {:>10} {:>10} {:>10} {:>10} {:>8}  {}",
            p.pid,
            crate::text::guest_text(&p.name),
            ByteSize(p.memory_current).to_string(),
            ByteSize(p.memory_swap).to_string(),
            p.kernels_submitted,
            p.kernels_ended,
            p.pending,
            if p.busy { "yes" } else { "no" }
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{handover_text, utc_text};

    #[test]
    fn handover_text_says_what_removes_mdevctls_definition_unless_it_is_gone() {
        let source = |removed, error: Option<&str>| gvm_proto::MdevctlSource {
            uuid: uuid::Uuid::nil(),
            path: "/etc/mdevctl.d/p/u".into(),
            removed,
            error: error.map(str::to_string),
        };
        let undefine = format!("`mdevctl undefine --uuid {}`", uuid::Uuid::nil());
        let kept = handover_text(&source(false, None), false);
        assert!(
            kept.starts_with("mdevctl still defines")
                && kept.contains(&undefine)
                && kept.contains("--remove-source"),
            "{kept}"
        );
        let failed = handover_text(&source(false, Some("cannot remove x: EPERM")), false);
        assert!(
            failed.starts_with("Error: cannot remove x: EPERM")
                && failed.contains("stays")
                && failed.contains(&undefine),
            "{failed}"
        );
        assert!(handover_text(&source(true, None), false).starts_with("Removed"));
        assert!(handover_text(&source(false, None), true).contains("after the import"));
    }

    #[test]
    fn epoch_seconds_read_as_utc_dates_across_leap_days_and_centuries() {
        for (secs, want) in [
            (0, "1970-01-01 00:00:00 UTC"),
            (951_782_400, "2000-02-29 00:00:00 UTC"),
            (1_796_222_106, "2026-12-02 14:35:06 UTC"),
            (4_102_444_799, "2099-12-31 23:59:59 UTC"),
        ] {
            assert_eq!(utc_text(secs), want);
        }
    }
}
