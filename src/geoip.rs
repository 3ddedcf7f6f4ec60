//! The country of an IP address, from a local MaxMind DB file (`[geoip] database`), for the
//! `country` an IP rule may derive beside its token or truncated network.
//!
//! The file is read whole at start and never again: a database is data the operator chose
//! and checked with `pseudonymizer check`, and a new one (they are published monthly) takes a
//! restart, as a new config does. The reader is the `maxminddb` crate (MaxMind's own Rust
//! reader of the format). Two layouts of a record are understood, and which one a file has is
//! found once, at start:
//! - MaxMind's GeoIP2/GeoLite2 Country and City, and DB-IP's own `.mmdb` downloads:
//!   `country.iso_code`;
//! - the ip-location-db packages (DB-IP Lite, geo-whois-asn, IPtoASN country): `country_code`.
//!
//! A country file has few distinct records (DB-IP's has 250, one per country, shared by 1.4
//! million networks): at start the whole search tree is walked once and every record's code
//! read into a table by its place in the file, so a lookup walks the tree and finds its
//! record's code by a binary search, never decoding a record. The walk is also the file's
//! check: a file whose tree cannot be walked whole (a cycle, damage), or that has more than
//! [`MAX_TABLED_RECORDS`] records, or takes longer than [`READ_BUDGET`] to read (records far
//! larger than a country's), is refused. (Tested with DB-IP's country file; a city file is
//! accepted within these limits, but none was tried here.) So whatever a file holds, a lookup costs one walk of at
//! most 128 tree nodes and a binary search.
//!
//! A file in which none of a few well-known public addresses has a country in either layout is
//! refused (an ASN or a city-less database given by mistake would otherwise make every derived
//! country null, silently); the layout is the one that places more of them. A value that is not
//! two ASCII capital letters is never published: the derived field is null for it, as for an
//! address the database does not know. There is no integrity check beyond the file's structure:
//! a file whose bytes were changed inside a record may give wrong countries, so check a
//! download's digest where its publisher gives one.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{path, Reader};

/// The largest database file read (512 MiB: GeoIP2 City is about 130 MB, country files 5–10 MB).
pub const DATABASE_LIMIT: u64 = 512 << 20;

/// Public addresses that every country database places (name servers of Google, Cloudflare,
/// Quad9, OpenDNS, and a registry's own hosts in Europe and South America, in both families).
/// A database that places none of them is not a country database.
const PROBES: [&str; 8] = [
    "8.8.8.8",
    "1.1.1.1",
    "9.9.9.9",
    "208.67.222.222",
    "193.0.6.139",
    "200.160.2.3",
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
];

/// The most distinct records read into the table at start, 16 bytes each (a country file has
/// a few hundred; a city file's combinations of city, postcode and coordinates may run to
/// millions, which the table still holds, in at most 64 MB).
pub const MAX_TABLED_RECORDS: usize = 4_000_000;

/// The longest the start may spend reading a file's records (DB-IP's country file takes about
/// 40 ms; a crafted one of half a million records each a map of 32,000 keys took 82 s).
pub const READ_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// The most ends of paths the walk that makes the table visits (DB-IP's country file has 1.4
/// million; a city file several million, each IPv4 one seen up to four times through
/// aliases). [`READ_BUDGET`] bounds the time besides.
const MAX_WALKED_NETWORKS: usize = 200_000_000;

/// Why a database could not be used. Messages name the file, never an address.
#[derive(Debug, thiserror::Error)]
pub enum GeoIpError {
    #[error(transparent)]
    File(#[from] crate::fsio::FileError),
    #[error("[geoip] database {path} is not a MaxMind DB file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("[geoip] database {path} ({kind}) has no country for any of {probes}: it is not a country database (give a GeoIP2/GeoLite2 Country or City file, or a DB-IP or ip-location-db country file)", probes = PROBES.join(", "))]
    NotCountry { path: PathBuf, kind: String },
    #[error("[geoip] database {path} cannot be used: {why}")]
    Unusable { path: PathBuf, why: String },
    #[error("[geoip] database is empty: name a MaxMind DB file, or leave [geoip] out")]
    NoPath,
}

/// Where a record keeps its country code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `country.iso_code` (GeoIP2 Country and City).
    GeoIp2,
    /// `country_code` (ip-location-db).
    Flat,
}

/// A country: ISO 3166-1 alpha-2, as the database gives it (two ASCII capital letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Country([u8; 2]);

impl Country {
    /// The code, if `code` is two ASCII capital letters.
    pub fn new(code: &str) -> Option<Country> {
        match code.as_bytes() {
            &[a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Some(Country([a, b])),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("two ASCII letters")
    }
}

/// A country database, read whole into memory.
pub struct CountryDb {
    reader: Reader<Vec<u8>>,
    layout: Layout,
    path: PathBuf,
    /// Each record's country (or none) by the record's offset in the data section, sorted by
    /// offset: every record a lookup can reach (a file whose tree cannot be walked whole is
    /// refused).
    table: Vec<(usize, Option<Country>)>,
}

impl std::fmt::Debug for CountryDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountryDb")
            .field("path", &self.path)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// Two handles are the same database when they were read from the same file at the same build
/// (what a plan's equality needs: plans are compared in tests, never databases' contents).
impl PartialEq for CountryDb {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.layout == other.layout
            && self.reader.metadata().build_epoch == other.reader.metadata().build_epoch
    }
}

impl Eq for CountryDb {}

impl CountryDb {
    /// Reads and checks the database at `path`: a regular file within [`DATABASE_LIMIT`], in
    /// the MaxMind DB format, that places some of the probe addresses in a country.
    pub fn open(path: &Path) -> Result<CountryDb, GeoIpError> {
        if path.as_os_str().is_empty() {
            return Err(GeoIpError::NoPath);
        }
        let bytes = crate::fsio::read_bounded(path, "[geoip] database", DATABASE_LIMIT)?;
        let format = |message: String| GeoIpError::Format {
            path: path.to_owned(),
            message,
        };
        // The reader checks what it reads and returns errors; a panic on a damaged file would
        // still be a refusal of the file, not a crash of the command.
        let reader = crate::config::catch_quietly(|| Reader::from_source(bytes))
            .ok_or_else(|| format("the reader failed on it".to_owned()))?
            .map_err(|e| format(crate::config::shorten(&e.to_string(), 200)))?;
        let mut db = CountryDb {
            reader,
            layout: Layout::GeoIp2,
            path: path.to_owned(),
            table: Vec::new(),
        };
        // The layout is the one that places more of the probes (a crafted file could answer
        // one probe in each).
        let mut placed = [0usize; 2];
        for (i, layout) in [Layout::GeoIp2, Layout::Flat].into_iter().enumerate() {
            db.layout = layout;
            placed[i] = crate::config::catch_quietly(|| {
                PROBES
                    .iter()
                    .filter_map(|p| p.parse::<IpAddr>().ok())
                    .filter(|ip| db.decoded_country(*ip).is_some())
                    .count()
            })
            .unwrap_or(0);
        }
        if placed == [0, 0] {
            return Err(GeoIpError::NotCountry {
                path: path.to_owned(),
                kind: crate::config::quote(&db.reader.metadata().database_type),
            });
        }
        db.layout = if placed[1] > placed[0] {
            Layout::Flat
        } else {
            Layout::GeoIp2
        };
        db.table = crate::config::catch_quietly(|| db.read_table())
            .unwrap_or_else(|| Err("the reader failed on its records".to_owned()))
            .map_err(|why| GeoIpError::Unusable {
                path: path.to_owned(),
                why,
            })?;
        Ok(db)
    }

    /// Every record's country by its offset, sorted by offset; or why the file's tree cannot be
    /// walked whole within the limits.
    ///
    /// The walk is bounded whatever the file holds: every end of a path is yielded (networks
    /// without data and aliases included, so no path is passed over silently), and a tree of
    /// `n` nodes has at most `n + 1` ends, each seen at most four times through the IPv4
    /// aliases MaxMind's writer makes. A walk past `8(n + 1)` ends, or past
    /// [`MAX_WALKED_NETWORKS`], is a tree with a cycle (a crafted file could otherwise make it
    /// visit 2^128 paths) or too large; and the whole read stops at [`READ_BUDGET`].
    fn read_table(&self) -> Result<Vec<(usize, Option<Country>)>, String> {
        let started = std::time::Instant::now();
        // The clock is read every 4096 ends and at every new record (each decode is bounded
        // by the reader, but may be large in a crafted file).
        let out_of_time = || started.elapsed() > READ_BUDGET;
        let too_slow = || {
            format!(
                "reading its records took more than {} s (records far larger than a country database's)",
                READ_BUDGET.as_secs()
            )
        };
        let mut table: Vec<(usize, Option<Country>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let options = maxminddb::WithinOptions::default()
            .include_networks_without_data()
            .include_aliased_networks();
        let nodes = usize::try_from(self.reader.metadata().node_count).unwrap_or(usize::MAX);
        let limit = nodes
            .saturating_add(1)
            .saturating_mul(8)
            .min(MAX_WALKED_NETWORKS);
        let walk = self.reader.networks(options).map_err(|e| {
            format!(
                "its search tree cannot be walked ({})",
                crate::config::shorten(&e.to_string(), 120)
            )
        })?;
        for (walked, network) in walk.enumerate() {
            if walked > limit {
                return Err(format!(
                    "its search tree has more than {limit} networks for {nodes} nodes (a cycle, or damage)"
                ));
            }
            if walked % 4096 == 0 && out_of_time() {
                return Err(too_slow());
            }
            let found = network.map_err(|e| {
                format!(
                    "its search tree is damaged ({})",
                    crate::config::shorten(&e.to_string(), 120)
                )
            })?;
            let Some(offset) = found.offset() else {
                continue;
            };
            if seen.insert(offset) {
                if seen.len() > MAX_TABLED_RECORDS {
                    return Err(format!(
                        "it has more than {MAX_TABLED_RECORDS} distinct records"
                    ));
                }
                if out_of_time() {
                    return Err(too_slow());
                }
                table.push((offset, self.decode(&found)));
            }
        }
        table.sort_unstable_by_key(|(offset, _)| *offset);
        Ok(table)
    }

    /// The country the database places `ip` in, or `None` where it has none (a private or
    /// unallocated address, an IPv6 address in an IPv4-only file) or none that is two ASCII
    /// capital letters. Every record a lookup can reach was read into the table at start.
    pub fn country(&self, ip: IpAddr) -> Option<Country> {
        let offset = self.reader.lookup(ip).ok()?.offset()?;
        let i = self.table.binary_search_by_key(&offset, |(o, _)| *o).ok()?;
        self.table[i].1
    }

    /// [`Self::country`], decoding the record instead of reading the table (the probes at
    /// start, before the table is made; the tests hold the table to it).
    pub fn decoded_country(&self, ip: IpAddr) -> Option<Country> {
        let found = self.reader.lookup(ip).ok()?;
        found.has_data().then_some(())?;
        self.decode(&found)
    }

    /// How many records the table holds.
    pub fn tabled_records(&self) -> usize {
        self.table.len()
    }

    /// The country of a found record, decoded from the file.
    fn decode(&self, found: &maxminddb::LookupResult<'_, Vec<u8>>) -> Option<Country> {
        let code: Option<&str> = match self.layout {
            Layout::GeoIp2 => found.decode_path(&path!["country", "iso_code"]).ok()?,
            Layout::Flat => found.decode_path(&path!["country_code"]).ok()?,
        };
        Country::new(code?)
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `check` and the worker's start log say of it: its type, build date and layout.
    pub fn describe(&self) -> String {
        let metadata = self.reader.metadata();
        let built = i64::try_from(metadata.build_epoch)
            .ok()
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
            .map_or_else(|| "an unknown date".to_owned(), |t| t.date().to_string());
        format!(
            "{} ({}, built {built}, IPv{} tree, countries read from {})",
            self.path.display(),
            crate::config::quote(&metadata.database_type),
            metadata.ip_version,
            match self.layout {
                Layout::GeoIp2 => "country.iso_code",
                Layout::Flat => "country_code",
            }
        )
    }

    /// When the database was built (seconds since 1970), for the age metric.
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_country_is_two_capital_letters() {
        assert_eq!(
            Country::new("SG").map(|c| c.as_str().to_owned()),
            Some("SG".to_owned())
        );
        for bad in ["", "S", "sg", "SGP", "S1", "ÄB", "S\u{0}"] {
            assert_eq!(Country::new(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not.mmdb");
        std::fs::write(&path, b"hello, this is not a MaxMind DB").unwrap();
        let error = CountryDb::open(&path).unwrap_err().to_string();
        assert!(
            error.contains("not.mmdb") && error.contains("not a MaxMind DB"),
            "{error}"
        );
        let error = CountryDb::open(&dir.path().join("missing.mmdb"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing.mmdb"), "{error}");
    }
}
