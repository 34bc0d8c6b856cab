//! The flags every benchmark driver takes, as one `clap::Args` struct that each driver
//! flattens into its own parser, and finding the service binaries the drivers start.

use std::path::{Path, PathBuf};

use super::Result;

/// Options common to the benchmark drivers.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Common options")]
pub struct BenchArgs {
    /// Write the report into the benchmark document (see --doc)
    #[arg(long)]
    pub record: bool,

    /// The file --record writes
    #[arg(long, value_name = "FILE", default_value = "docs/BENCHMARKS.md")]
    pub doc: PathBuf,

    /// Where the release binaries the driver starts are (referral-aggregator,
    /// referral-ingest, referral-api, examples/seed_codes) [default: this program's
    /// directory]
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Partitions of the topic `referral-aggregator migrate` creates
    #[arg(long, value_name = "N", default_value_t = 6,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
}

impl BenchArgs {
    /// `--bin-dir`, else the directory of this program, else `target/release`.
    pub fn bin_dir(&self) -> PathBuf {
        self.bin_dir.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("target/release"))
        })
    }

    /// The binary `name` (a path under the bin dir) if it exists, else an error that says
    /// how to build it (`build`, the cargo command).
    pub fn binary(&self, name: &str, build: &str) -> Result<PathBuf> {
        let path = self.bin_dir().join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{} not found: build it first ({build}) or pass --bin-dir",
                path.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Driver {
        #[command(flatten)]
        common: BenchArgs,
        #[arg(long, default_value_t = 1)]
        own: u32,
    }

    #[test]
    fn flattens_with_defaults_and_refuses_bad_partitions() {
        let driver = Driver::try_parse_from(["driver"]).unwrap();
        assert!(!driver.common.record);
        assert_eq!(driver.common.doc, Path::new("docs/BENCHMARKS.md"));
        assert_eq!(driver.common.partitions, 6);
        assert_eq!(driver.own, 1);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(Some(driver.common.bin_dir().as_path()), exe.parent());

        let driver = Driver::try_parse_from([
            "driver",
            "--record",
            "--doc",
            "x.md",
            "--bin-dir",
            "/nowhere",
            "--partitions",
            "3",
            "--own",
            "2",
        ])
        .unwrap();
        assert!(driver.common.record);
        assert_eq!(driver.common.doc, Path::new("x.md"));
        assert_eq!(driver.common.partitions, 3);
        let error = driver
            .common
            .binary("referral-api", "cargo build")
            .unwrap_err();
        assert_eq!(
            error,
            "/nowhere/referral-api not found: build it first (cargo build) or pass --bin-dir"
        );
        assert!(Driver::try_parse_from(["driver", "--partitions", "0"]).is_err());
        assert!(Driver::try_parse_from(["driver", "--partitions", "x"]).is_err());
    }
}
