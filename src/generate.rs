//! Synthetic call and message events for demos, tests and benchmarks.
//!
//! Values are realistic in form, not in content: phone numbers in the many shapes networks
//! deliver (E.164, national with punctuation, foreign, withheld), IPv4, IPv6 and IPv4-mapped
//! addresses, unicode message bodies, and arrays of every length the schemas allow. Every
//! number and address is drawn from documentation or test ranges where such ranges exist.

use apache_avro::types::Value;
use apache_avro::Schema;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The raw `comms.v1.CallEvent` schema shipped in `schemas/`.
pub const CALL_SCHEMA: &str = include_str!("../schemas/comms.v1.CallEvent.avsc");
/// The raw `comms.v1.MessageEvent` schema shipped in `schemas/`.
pub const MESSAGE_SCHEMA: &str = include_str!("../schemas/comms.v1.MessageEvent.avsc");

/// Which event type to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Call,
    Message,
}

impl Kind {
    /// The raw schema of this kind.
    pub fn schema(self) -> Schema {
        let text = match self {
            Kind::Call => CALL_SCHEMA,
            Kind::Message => MESSAGE_SCHEMA,
        };
        Schema::parse_str(text).expect("shipped schemas are valid")
    }
}

/// A seeded source of synthetic events.
pub struct Generator {
    rng: StdRng,
    serial: u64,
}

const BODIES: &[&str] = &[
    "Halo, jadi ketemu jam 7 di stasiun?",
    "Your verification code is 481 516. Do not share it.",
    "Paket Anda sedang dikirim 📦 — estimasi tiba besok.",
    "明日の会議は10時からです。よろしくお願いします。",
    "OK 👍",
    "Reminder: pembayaran tagihan jatuh tempo tanggal 28. Abaikan jika sudah membayar. Terima kasih telah menggunakan layanan kami — tim layanan pelanggan.",
    "Ñandú, café, naïve — déjà vu? Ελληνικά και русский тоже.",
    "",
];

impl Generator {
    /// A generator whose output depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            serial: 0,
        }
    }

    /// The next event of `kind`.
    pub fn event(&mut self, kind: Kind) -> Value {
        match kind {
            Kind::Call => self.call(),
            Kind::Message => self.message(),
        }
    }

    fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from_digit(self.rng.gen_range(0..16), 16).unwrap_or('0'))
            .collect()
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from_digit(self.rng.gen_range(0..10), 10).unwrap_or('0'))
            .collect()
    }

    /// A phone number in one of the shapes seen on the wire.
    pub fn phone(&mut self) -> String {
        let a = self.digits(4);
        let b = self.digits(4);
        match self.rng.gen_range(0..10) {
            0..=2 => format!("+62812{a}{b}"),
            3 => format!("0812-{a}-{b}"),
            4 => format!("+62 21 {a} {b}"),
            5 => format!("(021) {a}-{b}"),
            6 => format!("+1 415 555 {a}"),
            7 => format!("+44 20 7946 {a}"),
            8 => format!("+65 9{}", self.digits(7)),
            _ => {
                ["anonymous", "unknown", "*31#", "  withheld "][self.rng.gen_range(0..4)].to_owned()
            }
        }
    }

    /// An address: IPv4, IPv6, IPv4-mapped IPv6, or junk.
    pub fn ip(&mut self) -> String {
        match self.rng.gen_range(0..8) {
            0..=3 => format!("203.0.113.{}", self.rng.gen_range(1..255)),
            4 => format!(
                "10.{}.{}.{}",
                self.rng.gen_range(0..256),
                self.rng.gen_range(0..256),
                self.rng.gen_range(1..255)
            ),
            5 => format!(
                "2001:db8:{:x}::{:x}",
                self.rng.gen_range(0..0xffff),
                self.rng.gen_range(1..0xffff)
            ),
            6 => format!("::ffff:198.51.100.{}", self.rng.gen_range(1..255)),
            _ => "n/a".to_owned(),
        }
    }

    fn maybe<T>(&mut self, p: f64, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        if self.rng.gen_bool(p) {
            Some(f(self))
        } else {
            None
        }
    }

    fn device(&mut self) -> Value {
        let (os, model) = [
            ("Android", "Pixel 8"),
            ("iOS", "iPhone 15"),
            ("Android", "Galaxy A54"),
        ][self.rng.gen_range(0..3)];
        Value::Record(vec![
            (
                "device_id".into(),
                Value::String(format!("dev-{}", self.hex(16))),
            ),
            ("os".into(), Value::String(os.into())),
            (
                "os_version".into(),
                Value::String(format!(
                    "{}.{}",
                    self.rng.gen_range(12..18),
                    self.rng.gen_range(0..4)
                )),
            ),
            ("model".into(), Value::String(model.into())),
            (
                "app_version".into(),
                Value::String(format!(
                    "5.{}.{}",
                    self.rng.gen_range(0..20),
                    self.rng.gen_range(0..10)
                )),
            ),
        ])
    }

    fn location(&mut self) -> Value {
        let country = ["ID", "SG", "MY", "US"][self.rng.gen_range(0..4)];
        let cell = self.maybe(0.7, |g| format!("510-10-{}-{}", g.digits(5), g.digits(3)));
        Value::Record(vec![
            ("country".into(), Value::String(country.into())),
            ("cell_id".into(), optional(cell.map(Value::String))),
        ])
    }

    fn header(&mut self) -> (String, i64) {
        self.serial += 1;
        let event_id = format!("{}-{:08x}", self.hex(8), self.serial);
        let occurred_at = 1_764_000_000_000 + self.serial as i64 * 250 + self.rng.gen_range(0..250);
        (event_id, occurred_at)
    }

    fn call(&mut self) -> Value {
        let (event_id, occurred_at) = self.header();
        let direction = self.rng.gen_range(0..3);
        let status = self.rng.gen_range(0..5);
        let answered = status == 0;
        let caller_ip = self.maybe(0.8, Self::ip);
        let callee_ip = self.maybe(0.6, Self::ip);
        let codec = self.maybe(0.7, |g| {
            ["opus", "G.711", "AMR-WB"][g.rng.gen_range(0..3)].to_owned()
        });
        let device = self.maybe(0.7, Self::device);
        let location = self.maybe(0.7, Self::location);
        let recording = self.maybe(0.3, |g| {
            format!("https://recordings.example.net/2026/11/{}.wav", g.hex(24))
        });
        Value::Record(vec![
            ("event_id".into(), Value::String(event_id)),
            (
                "call_id".into(),
                Value::String(format!("call-{}", self.hex(12))),
            ),
            ("occurred_at".into(), Value::TimestampMillis(occurred_at)),
            (
                "direction".into(),
                Value::Enum(
                    direction,
                    ["INBOUND", "OUTBOUND", "INTERNAL"][direction as usize].into(),
                ),
            ),
            (
                "status".into(),
                Value::Enum(
                    status,
                    ["ANSWERED", "MISSED", "BUSY", "FAILED", "REJECTED"][status as usize].into(),
                ),
            ),
            ("caller".into(), Value::String(self.phone())),
            ("callee".into(), Value::String(self.phone())),
            ("caller_ip".into(), optional(caller_ip.map(Value::String))),
            ("callee_ip".into(), optional(callee_ip.map(Value::String))),
            (
                "duration_ms".into(),
                Value::Long(if answered {
                    self.rng.gen_range(1_000..3_600_000)
                } else {
                    0
                }),
            ),
            ("codec".into(), optional(codec.map(Value::String))),
            ("device".into(), optional(device)),
            ("location".into(), optional(location)),
            (
                "recording_url".into(),
                optional(recording.map(Value::String)),
            ),
        ])
    }

    fn attachment(&mut self) -> Value {
        let (content_type, ext) = [
            ("image/jpeg", "jpg"),
            ("video/mp4", "mp4"),
            ("application/pdf", "pdf"),
        ][self.rng.gen_range(0..3)];
        Value::Record(vec![
            ("content_type".into(), Value::String(content_type.into())),
            (
                "size_bytes".into(),
                Value::Long(self.rng.gen_range(1_000..5_000_000)),
            ),
            (
                "url".into(),
                Value::String(format!(
                    "https://media.example.net/m/{}.{ext}",
                    self.hex(20)
                )),
            ),
        ])
    }

    fn message(&mut self) -> Value {
        let (event_id, occurred_at) = self.header();
        let channel = self.rng.gen_range(0..3);
        let recipients = (0..self.rng.gen_range(1..4))
            .map(|_| Value::String(self.phone()))
            .collect();
        let sender_ip = self.maybe(0.7, Self::ip);
        let body = self.maybe(0.9, |g| BODIES[g.rng.gen_range(0..BODIES.len())].to_owned());
        let attachments = if channel == 0 {
            0
        } else {
            self.rng.gen_range(0..3)
        };
        let attachments = (0..attachments).map(|_| self.attachment()).collect();
        let device = self.maybe(0.7, Self::device);
        let location = self.maybe(0.7, Self::location);
        Value::Record(vec![
            ("event_id".into(), Value::String(event_id)),
            (
                "message_id".into(),
                Value::String(format!("msg-{}", self.hex(12))),
            ),
            ("occurred_at".into(), Value::TimestampMillis(occurred_at)),
            (
                "channel".into(),
                Value::Enum(channel, ["SMS", "MMS", "CHAT"][channel as usize].into()),
            ),
            ("sender".into(), Value::String(self.phone())),
            ("recipients".into(), Value::Array(recipients)),
            ("sender_ip".into(), optional(sender_ip.map(Value::String))),
            ("body".into(), optional(body.map(Value::String))),
            ("attachments".into(), Value::Array(attachments)),
            ("device".into(), optional(device)),
            ("location".into(), optional(location)),
        ])
    }
}

fn optional(value: Option<Value>) -> Value {
    match value {
        Some(v) => Value::Union(1, Box::new(v)),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

fn typical_device(os: &str, os_version: &str, model: &str) -> Value {
    Value::Record(vec![
        (
            "device_id".into(),
            Value::String("dev-4f1c2a9e7b3d5c80".into()),
        ),
        ("os".into(), Value::String(os.into())),
        ("os_version".into(), Value::String(os_version.into())),
        ("model".into(), Value::String(model.into())),
        ("app_version".into(), Value::String("5.12.3".into())),
    ])
}

fn typical_location() -> Value {
    Value::Record(vec![
        ("country".into(), Value::String("ID".into())),
        (
            "cell_id".into(),
            optional(Some(Value::String("510-10-12345-678".into()))),
        ),
    ])
}

/// The benchmark's typical call: every optional field present.
pub fn typical_call() -> Value {
    let device = typical_device("Android", "14.1", "Pixel 8");
    let location = typical_location();
    Value::Record(vec![
        ("event_id".into(), Value::String("9b2e4c1a-0000a1b2".into())),
        ("call_id".into(), Value::String("call-7f3e9a1c2b4d".into())),
        (
            "occurred_at".into(),
            Value::TimestampMillis(1_764_000_123_456),
        ),
        ("direction".into(), Value::Enum(1, "OUTBOUND".into())),
        ("status".into(), Value::Enum(0, "ANSWERED".into())),
        ("caller".into(), Value::String("+6281234567890".into())),
        ("callee".into(), Value::String("+6281298765432".into())),
        (
            "caller_ip".into(),
            optional(Some(Value::String("203.0.113.45".into()))),
        ),
        (
            "callee_ip".into(),
            optional(Some(Value::String("2001:db8:85a3::8a2e:370:7334".into()))),
        ),
        ("duration_ms".into(), Value::Long(184_250)),
        ("codec".into(), optional(Some(Value::String("opus".into())))),
        ("device".into(), optional(Some(device))),
        ("location".into(), optional(Some(location))),
        (
            "recording_url".into(),
            optional(Some(Value::String(
                "https://recordings.example.net/2026/11/4f1c2a9e7b3d5c804f1c2a9e.wav".into(),
            ))),
        ),
    ])
}

/// The benchmark's typical message: 2 recipients, a 160-byte body, 1 attachment.
pub fn typical_message() -> Value {
    let body = "Reminder: your bill of Rp 150.000 is due on 28 Nov. Pay in the app or at any minimarket. Ignore this message if you have already paid. Thank you, support!";
    let body = format!("{body:<160}");
    let device = typical_device("iOS", "17.2", "iPhone 15");
    let location = typical_location();
    let attachment = Value::Record(vec![
        ("content_type".into(), Value::String("image/jpeg".into())),
        ("size_bytes".into(), Value::Long(482_113)),
        (
            "url".into(),
            Value::String("https://media.example.net/m/8c1d2e3f4a5b6c7d8e9f.jpg".into()),
        ),
    ]);
    Value::Record(vec![
        ("event_id".into(), Value::String("9b2e4c1a-0000a1b3".into())),
        (
            "message_id".into(),
            Value::String("msg-7f3e9a1c2b4d".into()),
        ),
        (
            "occurred_at".into(),
            Value::TimestampMillis(1_764_000_123_456),
        ),
        ("channel".into(), Value::Enum(0, "SMS".into())),
        ("sender".into(), Value::String("+6281234567890".into())),
        (
            "recipients".into(),
            Value::Array(vec![
                Value::String("+6281298765432".into()),
                Value::String("+6285712345678".into()),
            ]),
        ),
        (
            "sender_ip".into(),
            optional(Some(Value::String("203.0.113.45".into()))),
        ),
        ("body".into(), optional(Some(Value::String(body)))),
        ("attachments".into(), Value::Array(vec![attachment])),
        ("device".into(), optional(Some(device))),
        ("location".into(), optional(Some(location))),
    ])
}
