//! `couchfile`: inspect couchfile files, like upstream's `couch_dbinfo` and
//! `couch_dbdump`.

use clap::{Args, Parser, Subcommand};
use kvstore_couchfile::inspect;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "couchfile",
    about = "Inspect vbucket store files (<vbid>.couch.<rev>)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The newest header, counts, sizes and fragmentation.
    Info {
        /// The file.
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
    /// Every header of the rollback chain, newest first.
    #[arg(long)]
    headers: bool,
}

#[derive(Args)]
struct DumpArgs {
    /// The file.
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
                out!("file:            {}", i.path);
                out!("size:            {} bytes", i.file_bytes);
                if i.torn_bytes > 0 {
                    out!("torn tail:       {} bytes (ignored)", i.torn_bytes);
                }
                out!("vbucket:         {}", h.vbid);
                out!("revision:        {}", h.revision);
                out!("header offset:   {}", h.offset);
                out!("commits:         {}", h.commit);
                out!("high seqno:      {}", h.high_seqno);
                out!("purge seqno:     {}", h.purge_seqno);
                out!("live items:      {}", h.live_items);
                out!("deleted items:   {}", h.deleted_items);
                out!("data bytes:      {}", h.data_bytes);
                out!("local docs:      {}", h.local_docs);
                out!("by-seqno items:  {}", i.by_seqno_entries);
                out!("fragmentation:   {:.1}%", i.fragmentation * 100.0);
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
                            "header @{} commit {} high {} purge {} live {} deleted {} prev {:?} region {} bytes",
                            h.offset,
                            h.commit,
                            h.high_seqno,
                            h.purge_seqno,
                            h.live_items,
                            h.deleted_items,
                            h.prev,
                            h.region_bytes
                        );
                    }
                }
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
