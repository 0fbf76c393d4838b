//! `couchfile`: inspect couchfile files, like upstream's `couch_dbinfo` and
//! `couch_dbdump`.

use clap::{Args, Parser, Subcommand};
use kvstore_couchfile::inspect;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "couchfile",
    about = "Inspect a vbucket store: a <vbid>.couch.<rev> directory (index file and log segments)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The newest index header, counts, sizes, log segments and
    /// fragmentation.
    Info {
        /// The store directory.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Documents by key or by seqno, local documents, or every header.
    Dump(DumpArgs),
}

#[derive(Args)]
#[group(required = false, multiple = false)]
struct What {
    /// Documents in key order (the default).
    #[arg(long)]
    by_key: bool,
    /// Documents in seqno order.
    #[arg(long)]
    by_seqno: bool,
    /// Local documents.
    #[arg(long)]
    local: bool,
    /// Every index header of the rollback chain, newest first.
    #[arg(long)]
    headers: bool,
    /// The log segments: bytes and live bytes.
    #[arg(long)]
    segments: bool,
    /// Every log record, in log order.
    #[arg(long)]
    log: bool,
}

#[derive(Args)]
struct DumpArgs {
    /// The store directory.
    file: PathBuf,
    #[command(flatten)]
    what: What,
    /// Print values too.
    #[arg(long)]
    values: bool,
    /// Print one JSON object per line.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("couchfile: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a line; a closed pipe (`couchfile dump ... | head`) ends the
/// program quietly instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("couchfile: writing output: {e}");
            std::process::exit(1);
        }
    }};
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Info {
            file,
            json: as_json,
        } => {
            let i = inspect::info(&file)?;
            if as_json {
                out!("{}", json(&i));
            } else {
                let h = &i.header;
                out!("store:           {}", i.path);
                out!("vbucket:         {}", h.vbid);
                out!("revision:        {}", h.revision);
                out!("disk bytes:      {}", i.disk_bytes);
                out!("index bytes:     {}", i.index_bytes);
                out!("checkpoints:     {}", h.checkpoint);
                out!("header offset:   {}", h.offset);
                out!(
                    "replay from:     segment {} offset {} (commit {})",
                    h.replay_from.0,
                    h.replay_from.1,
                    h.next_commit
                );
                out!(
                    "log records after the checkpoint: {}",
                    i.records_after_checkpoint
                );
                out!("high seqno:      {}", i.high_seqno);
                out!("purge seqno:     {}", h.purge_seqno);
                out!("live items:      {}", i.live_items);
                out!("deleted items:   {}", i.deleted_items);
                out!("data bytes:      {}", i.data_bytes);
                out!("local docs:      {}", h.local_docs);
                out!("reclaimed bytes: {}", h.reclaimed_bytes);
                out!(
                    "log:             {} segments, {:.1}% of their document bytes not live",
                    i.segments.len(),
                    i.log_fragmentation * 100.0
                );
                for s in &i.segments {
                    out!(
                        "  wal.{:<6} {:>12} bytes on disk, {:>12} document bytes, {:>12} live",
                        s.no,
                        s.file_bytes,
                        s.item_bytes,
                        s.live_bytes
                    );
                }
            }
        }
        Command::Dump(args) => {
            let w = &args.what;
            if w.headers {
                for h in inspect::headers(&args.file)? {
                    if args.json {
                        out!("{}", json(&h));
                    } else {
                        out!(
                            "header @{} checkpoint {} high {} purge {} live {} deleted {} prev {:?} region {} bytes replay from {}:{}",
                            h.offset,
                            h.checkpoint,
                            h.high_seqno,
                            h.purge_seqno,
                            h.live_items,
                            h.deleted_items,
                            h.prev,
                            h.region_bytes,
                            h.replay_from.0,
                            h.replay_from.1
                        );
                    }
                }
            } else if w.segments {
                for seg in inspect::segments(&args.file)? {
                    if args.json {
                        out!("{}", json(&seg));
                    } else {
                        out!(
                            "wal.{} file {} bytes, documents {} bytes, live {} bytes",
                            seg.no,
                            seg.file_bytes,
                            seg.item_bytes,
                            seg.live_bytes
                        );
                    }
                }
            } else if w.log {
                inspect::dump_log(&args.file, &mut |r| {
                    if args.json {
                        out!("{}", json(&r));
                    } else {
                        out!(
                            "wal.{} @{} {} commit {} high {} {} bytes {} items seqnos {:?}",
                            r.segment,
                            r.offset,
                            r.kind,
                            r.commit,
                            r.high_seqno,
                            r.bytes,
                            r.items,
                            r.seqnos
                        );
                    }
                })?;
            } else if w.local {
                for (name, value) in inspect::dump_local(&args.file)? {
                    if args.json {
                        out!(
                            "{}",
                            json(&serde_json::json!({ "name": name, "value": value }))
                        );
                    } else {
                        out!("{name}: {value}");
                    }
                }
            } else {
                let mut print = |d: inspect::DocInfo| {
                    if args.json {
                        out!("{}", json(&d));
                    } else {
                        let value = d
                            .value
                            .as_deref()
                            .map(|v| format!(" value={v}"))
                            .unwrap_or_default();
                        out!(
                            "seqno {} key {:#x}:{} {}cas {:#x} rev {} flags {:#x} exp {} dt {} bytes {}{}",
                            d.seqno,
                            d.collection,
                            d.key,
                            if d.deleted { "DELETED " } else { "" },
                            d.cas,
                            d.rev_seqno,
                            d.flags,
                            d.expiry,
                            d.datatype,
                            d.value_bytes,
                            value
                        );
                    }
                };
                if w.by_seqno {
                    inspect::dump_by_seqno(&args.file, args.values, &mut print)?;
                } else {
                    inspect::dump_by_key(&args.file, args.values, &mut print)?;
                }
            }
        }
    }
    Ok(())
}
