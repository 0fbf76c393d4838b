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
                println!("{}", json(&i));
            } else {
                let h = &i.header;
                println!("file:            {}", i.path);
                println!("size:            {} bytes", i.file_bytes);
                if i.torn_bytes > 0 {
                    println!("torn tail:       {} bytes (ignored)", i.torn_bytes);
                }
                println!("vbucket:         {}", h.vbid);
                println!("revision:        {}", h.revision);
                println!("header offset:   {}", h.offset);
                println!("commits:         {}", h.commit);
                println!("high seqno:      {}", h.high_seqno);
                println!("purge seqno:     {}", h.purge_seqno);
                println!("live items:      {}", h.live_items);
                println!("deleted items:   {}", h.deleted_items);
                println!("data bytes:      {}", h.data_bytes);
                println!("local docs:      {}", h.local_docs);
                println!("by-seqno items:  {}", i.by_seqno_entries);
                println!("fragmentation:   {:.1}%", i.fragmentation * 100.0);
            }
        }
        Command::Dump(args) => {
            let w = &args.what;
            if w.headers {
                for h in inspect::headers(&args.file)? {
                    if args.json {
                        println!("{}", json(&h));
                    } else {
                        println!(
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
                        println!(
                            "{}",
                            json(&serde_json::json!({ "name": name, "value": value }))
                        );
                    } else {
                        println!("{name}: {value}");
                    }
                }
            } else {
                let mut print = |d: inspect::DocInfo| {
                    if args.json {
                        println!("{}", json(&d));
                    } else {
                        let value = d
                            .value
                            .as_deref()
                            .map(|v| format!(" value={v}"))
                            .unwrap_or_default();
                        println!(
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
