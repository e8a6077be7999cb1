//! The chunkvault binary: server, maintenance commands and client commands.

mod admin;
mod bench;
mod client_cmd;
mod config;
mod logging;
mod ops;
mod serve;
mod wiring;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use config::{Config, ServeArgs, StoreArgs};

#[derive(Parser, Debug)]
#[command(
    name = "chunkvault",
    version,
    about = "Chunked, content-addressed, verified file storage"
)]
struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the HTTP server.
    Serve(ServeArgs),
    /// Apply pending metadata migrations.
    Migrate,
    /// Collect garbage once: expire abandoned uploads, delete unreferenced and unknown blobs,
    /// report referenced chunks whose blob is missing.
    Gc(ops::GcArgs),
    /// Read every stored chunk and verify it; exit code 1 when any is missing or corrupt.
    Scrub(ops::ScrubArgs),
    /// With several locations: re-create missing or corrupt chunk copies from healthy ones until
    /// every chunk meets its placement policy; exit code 1 if some chunk could not be restored.
    Repair(ops::RepairArgs),
    /// Blob location commands.
    #[command(subcommand)]
    Location(LocationCommand),
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Upload files or directories to a server (progress bar; checks each file's digest).
    Upload {
        #[command(flatten)]
        client: client_cmd::ClientArgs,
        #[command(flatten)]
        args: client_cmd::UploadArgs,
    },
    /// Download a file; an interrupted download resumes where it stopped.
    Download {
        #[command(flatten)]
        client: client_cmd::ClientArgs,
        #[command(flatten)]
        args: client_cmd::DownloadArgs,
    },
    /// List files, newest first.
    Ls {
        #[command(flatten)]
        client: client_cmd::ClientArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show a file's metadata and manifest summary.
    Stat {
        #[command(flatten)]
        client: client_cmd::ClientArgs,
        id: String,
    },
    /// Delete files.
    Rm {
        #[command(flatten)]
        client: client_cmd::ClientArgs,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// A presigned download link to a file: anyone holding it may download without a key
    /// until it expires.
    Link {
        #[command(flatten)]
        client: client_cmd::ClientArgs,
        id: String,
        /// How long the link stays valid, e.g. 1h, 7d (at most 30 days).
        #[arg(long, default_value = "1h")]
        expires: String,
        /// Limit the link to one byte range, e.g. bytes=0-99.
        #[arg(long)]
        range: Option<String>,
    },
    /// Accounts, API keys, quotas and the link secret, straight on the metadata store (same
    /// configuration as serve; no server needed).
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Benchmark the server against a plain baseline (nginx WebDAV) on the same disk.
    Bench(bench::BenchArgs),
    /// Print the OpenAPI document of the HTTP API (what `GET /openapi.json` serves).
    Openapi,
}

#[derive(Subcommand, Debug)]
enum LocationCommand {
    /// Move every chunk copy off location NAME onto the others (placement without it), so it
    /// can be removed from the configuration.
    Drain {
        name: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the configuration (file, environment, flags) and print it, secrets hidden.
    Check(ServeArgs),
}

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(cli));
    logging::flush();
    match code {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(serve) => {
            let config = Config::load(&cli.store, &serve)?;
            logging::init(config.log_format);
            serve::run(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let config = Config::load(&cli.store, &ServeArgs::default())?;
            logging::init(config.log_format);
            ops::migrate(&config).await
        }
        Command::Gc(args) => {
            let config = Config::load(&cli.store, &args.serve)?;
            logging::init(config.log_format);
            ops::gc(&config, &args).await
        }
        Command::Scrub(args) => {
            let config = Config::load(&cli.store, &ServeArgs::default())?;
            logging::init(config.log_format);
            ops::scrub(&config, &args).await
        }
        Command::Repair(args) => {
            let config = Config::load(&cli.store, &ServeArgs::default())?;
            logging::init(config.log_format);
            ops::repair(&config, &args).await
        }
        Command::Location(LocationCommand::Drain { name, json }) => {
            let config = Config::load(&cli.store, &ServeArgs::default())?;
            logging::init(config.log_format);
            ops::drain(&config, &name, json).await
        }
        Command::Upload { client, args } => client_cmd::upload(&client, &args).await,
        Command::Download { client, args } => client_cmd::download(&client, &args).await,
        Command::Ls { client, limit } => client_cmd::ls(&client, limit).await,
        Command::Stat { client, id } => client_cmd::stat(&client, &id).await,
        Command::Rm { client, ids } => client_cmd::rm(&client, &ids).await,
        Command::Link {
            client,
            id,
            expires,
            range,
        } => client_cmd::link(&client, &id, &expires, range).await,
        Command::Admin(cmd) => {
            let config = Config::load(&cli.store, &ServeArgs::default())?;
            logging::init(config.log_format);
            admin::run(&config, cmd).await
        }
        Command::Openapi => {
            // Needs no configuration and no store: the document is built from the code.
            println!("{}", chunkvault_http::openapi().to_pretty_json()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check(serve)) => {
            let config = Config::load(&cli.store, &serve)?;
            for line in config.summary() {
                println!("{line}");
            }
            println!("configuration is valid");
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => bench::run(&cli.store, args).await,
    }
}
