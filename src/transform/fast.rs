//! The fast path: one pass over the Avro binary, driven by the compiled [`Step`] tree.
//!
//! Kept fields are not decoded: the walker skips over a run of them and copies the run's
//! bytes in one `extend_from_slice`. Only leaves with an action are read, and their output is
//! written straight into the caller's buffer (tokens and IP texts are built on the stack, and
//! envelopes are sealed in place), so a typical event allocates nothing.

use super::binary::{write_bytes, write_long, Cursor};
use super::leaf::{ip_country, phone_token, pseudonymize, truncate_time};
use super::{ActiveKeys, ErrorKind, Regions, TransformError};
use crate::envelope;
use crate::geoip::Country;
use crate::keys::PseudonymKey;
use crate::phone::attributes::PhoneAttributes;
use crate::phone::PhoneCanon;
use crate::plan::{DerivedShape, Leaf, LeafInput, Locate, Plan, RegionSource, Shape, Step};
use crate::rules::{Action, Attribute};
use crate::subjects::SubjectGate;
use crate::token::TokenClass;

/// Transforms one event. With a `gate` that meets a withheld subject in a record with sealed
/// fields, the record is walked a second time with the sealed fields written empty: a sealed
/// field may come before the identifier that withholds it, and this case is rare enough that
/// the common one carries no bookkeeping for it.
pub fn transform(
    plan: &Plan,
    phone: &PhoneCanon,
    keys: &ActiveKeys,
    gate: Option<&SubjectGate<'_>>,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<Regions, TransformError> {
    // A record's own regions come first: a region field may follow the phone fields it serves.
    let mut regions = Regions::default();
    for source in &plan.regions {
        regions.push(phone.record_region(find_region(source, input)));
    }
    let start = out.len();
    let mut walker = Walker {
        phone,
        keys,
        pseudonym: keys.pseudonym_in(plan.domain.as_deref()),
        regions: &regions,
        gate,
        // A withheld subject met before the walk (the record key) withholds from the start.
        seal: !gate.is_some_and(|g| g.met()),
        attributes: std::cell::Cell::new(None),
        country: std::cell::Cell::new(None),
        collecting: std::cell::Cell::new(false),
        collected: std::cell::RefCell::new(Vec::new()),
        array_seen: std::cell::Cell::new(false),
    };
    walker.walk(plan, input, out)?;
    if walker.seal && gate.is_some_and(|g| g.met()) && plan.needs_encryption {
        out.truncate(start);
        walker.seal = false;
        walker.walk(plan, input, out)?;
    }
    Ok(regions)
}

/// The text of a region field, or `None` where it is null or the bytes do not get that far
/// (the walk that follows reports the damage).
fn find_region<'i>(source: &RegionSource, input: &'i [u8]) -> Option<&'i str> {
    let mut cur = Cursor::new(input);
    for step in &source.steps {
        match step {
            Locate::Skip(shape) => skip(shape, &mut cur).ok()?,
            Locate::Branch(branch) => {
                if usize::try_from(cur.long().ok()?).ok()? != *branch {
                    return None;
                }
            }
            Locate::String => return std::str::from_utf8(cur.bytes().ok()?).ok(),
            Locate::Value(_) => return None,
        }
    }
    None
}

/// The encoded bytes of the value `steps` lead to in `avro` (a record's binary this process
/// wrote, so its strings are not checked again), or `None` where a nullable record on the way
/// is null or the bytes do not get that far.
pub fn locate_span<'i>(steps: &[Locate], avro: &'i [u8]) -> Option<&'i [u8]> {
    let mut cur = Cursor::new(avro);
    for step in steps {
        if let Some(span) = locate_step(step, &mut cur)? {
            return Some(span);
        }
    }
    None
}

/// One move of [`locate_span`]: `Some(None)` to go on, `Some(Some(bytes))` at the value,
/// `None` where the value is not there.
#[inline]
pub fn locate_step<'i>(step: &Locate, cur: &mut Cursor<'i>) -> Option<Option<&'i [u8]>> {
    match step {
        Locate::Skip(shape) => skip_as::<false>(shape, cur).ok()?,
        Locate::Branch(branch) => {
            if usize::try_from(cur.long().ok()?).ok()? != *branch {
                return None;
            }
        }
        Locate::String => return Some(Some(cur.bytes().ok()?)),
        Locate::Value(shape) => {
            let start = cur.pos();
            skip_as::<false>(shape, cur).ok()?;
            return Some(Some(cur.since(start)));
        }
    }
    Some(None)
}

struct Walker<'a> {
    phone: &'a PhoneCanon,
    keys: &'a ActiveKeys,
    /// The active pseudonym key in the plan's domain.
    pseudonym: Option<&'a PseudonymKey>,
    regions: &'a Regions,
    gate: Option<&'a SubjectGate<'a>>,
    /// False for a withheld subject's record: sealed fields are written empty.
    seal: bool,
    /// The attributes of the last phone number whose rule derives them, for the
    /// [`Step::Derived`] around its leaf to write.
    attributes: std::cell::Cell<Option<PhoneAttributes>>,
    /// Likewise, the country of the last IP address whose rule derives it.
    country: std::cell::Cell<Option<Country>>,
    /// Inside a [`Step::Derived`] over an array: each item's attributes, in order (a null item
    /// pushes none of them), and whether the array was there (not a null in its place).
    collecting: std::cell::Cell<bool>,
    collected: std::cell::RefCell<Vec<(Option<PhoneAttributes>, Option<Country>)>>,
    array_seen: std::cell::Cell<bool>,
}

impl Walker<'_> {
    fn walk(&self, plan: &Plan, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        let mut cursor = Cursor::new(input);
        self.step(&plan.step, &mut cursor, out)?;
        if cursor.remaining() != 0 {
            return Err(TransformError::at("", ErrorKind::TrailingBytes));
        }
        Ok(())
    }

    fn step(
        &self,
        step: &Step,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        match step {
            Step::Copy { shape, paths } => {
                let start = cur.pos();
                if let Err(kind) = skip(shape, cur) {
                    return Err(TransformError::at(locate(shape, paths, cur, start), kind));
                }
                out.extend_from_slice(cur.since(start));
            }
            Step::Skip { shape, path } => {
                skip(shape, cur).map_err(|k| TransformError::at(path, k))?
            }
            Step::Record(steps) => {
                for step in steps {
                    self.step(step, cur, out)?;
                }
            }
            Step::Union { branches, path } => {
                let index = cur.long().map_err(|k| TransformError::at(path, k))?;
                let branch = usize::try_from(index)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or_else(|| TransformError::at(path, ErrorKind::BadUnion))?;
                if !self.seal {
                    if let Some(null) = sealed_to_null(branches, branch) {
                        cur.bytes().map_err(|k| TransformError::at(path, k))?;
                        write_long(out, null as i64);
                        return Ok(());
                    }
                }
                write_long(out, index);
                if self.collecting.get()
                    && matches!(
                        branch,
                        Step::Copy {
                            shape: Shape::Null,
                            ..
                        }
                    )
                {
                    // A null item of an array whose attributes are being collected.
                    self.collected.borrow_mut().push((None, None));
                }
                self.step(branch, cur, out)?;
            }
            Step::Array { item, path } => loop {
                if self.collecting.get() {
                    self.array_seen.set(true);
                }
                let (count, size) = cur.block().map_err(|k| TransformError::at(path, k))?;
                // Output blocks always use the plain count form: item sizes change.
                write_long(out, count as i64);
                if count == 0 {
                    break;
                }
                let start = cur.pos();
                for _ in 0..count {
                    self.step(item, cur, out)?;
                }
                cur.end_block(start, size)
                    .map_err(|k| TransformError::at(path, k))?;
            },
            Step::Leaf(leaf) => self
                .leaf(leaf, cur, out)
                .map_err(|k| TransformError::at(&leaf.path, k))?,
            Step::Derived {
                field,
                derive,
                shape: DerivedShape::Single,
                path: _,
            } => {
                self.attributes.set(None);
                self.country.set(None);
                self.step(field, cur, out)?;
                let attributes = self.attributes.take();
                let country = self.country.take();
                for attribute in derive.iter() {
                    write_attribute(attributes.as_ref(), country, attribute, out);
                }
            }
            Step::Derived {
                field,
                derive,
                shape: DerivedShape::Array { nullable },
                path: _,
            } => {
                self.collected.borrow_mut().clear();
                self.array_seen.set(false);
                self.collecting.set(true);
                let walked = self.step(field, cur, out);
                self.collecting.set(false);
                walked?;
                let collected = self.collected.borrow();
                for attribute in derive.iter() {
                    if !self.array_seen.get() {
                        // The field's array was null: so are the derived arrays.
                        write_long(out, 0);
                        continue;
                    }
                    if *nullable {
                        write_long(out, 1);
                    }
                    if !collected.is_empty() {
                        write_long(out, collected.len() as i64);
                        for (attributes, country) in collected.iter() {
                            write_attribute(attributes.as_ref(), *country, attribute, out);
                        }
                    }
                    write_long(out, 0);
                }
            }
        }
        Ok(())
    }

    #[inline]
    fn leaf(&self, leaf: &Leaf, cur: &mut Cursor<'_>, out: &mut Vec<u8>) -> Result<(), ErrorKind> {
        if matches!(leaf.input, LeafInput::Int | LeafInput::Long) {
            return number(leaf, cur, out);
        }
        let value = cur.bytes()?;
        // A string leaf is checked once, here, whatever its action.
        let text = match leaf.input {
            LeafInput::String => {
                Some(std::str::from_utf8(value).map_err(|_| ErrorKind::InvalidUtf8)?)
            }
            LeafInput::Bytes | LeafInput::Int | LeafInput::Long => None,
        };
        if leaf.action == Action::Encrypt && !self.seal {
            write_long(out, 0);
            return Ok(());
        }
        if leaf.action == Action::Encrypt {
            let key = self
                .keys
                .encryption
                .as_deref()
                .ok_or(ErrorKind::NoEncryptionKey)?;
            write_long(out, envelope::sealed_len(key, value.len()) as i64);
            envelope::seal_into(key, &leaf.path, value, out);
            return Ok(());
        }
        // Only strings reach a pseudonymizing action (the plan compiles no other).
        let text = match text {
            Some(text) => text,
            None => std::str::from_utf8(value).map_err(|_| ErrorKind::InvalidUtf8)?,
        };
        let region = match leaf.region {
            Some(i) => self.regions[i],
            None => self.phone.region(),
        };
        if !leaf.derive.is_empty() && leaf.action == Action::Token(TokenClass::Phone) {
            let (token, attributes) =
                phone_token(text, self.phone, region, self.pseudonym, self.gate, true)?;
            write_bytes(out, token.as_bytes());
            if self.collecting.get() {
                self.collected.borrow_mut().push((attributes, None));
            } else {
                self.attributes.set(attributes);
            }
            return Ok(());
        }
        let pseudonym = pseudonymize(
            leaf.action,
            text,
            self.phone,
            region,
            self.pseudonym,
            self.gate,
        )?;
        write_bytes(out, pseudonym.as_bytes());
        if let Some(db) = &leaf.country {
            let country = ip_country(leaf.action, text, db, self.gate);
            if self.collecting.get() {
                self.collected.borrow_mut().push((None, country));
            } else {
                self.country.set(country);
            }
        }
        Ok(())
    }
}

/// A number rewritten by a generalizing action (`time-truncate`, `bucket`).
fn number(leaf: &Leaf, cur: &mut Cursor<'_>, out: &mut Vec<u8>) -> Result<(), ErrorKind> {
    let value = cur.long()?;
    let int = leaf.input == LeafInput::Int;
    if int {
        i32::try_from(value).map_err(|_| ErrorKind::OutOfRange)?;
    }
    match (leaf.action, &leaf.bucketing) {
        (Action::TimeTruncate(_), _) => write_long(out, truncate_time(value, leaf.ticks, int)?),
        (Action::Bucket { label: false }, Some(buckets)) => {
            let floor = if int { i64::from(i32::MIN) } else { i64::MIN };
            write_long(out, buckets.lower(value, floor));
        }
        (Action::Bucket { label: true }, Some(buckets)) => {
            write_bytes(out, buckets.label(value).as_bytes())
        }
        _ => return Err(ErrorKind::SchemaMismatch),
    }
    Ok(())
}

/// One derived field: a `["null", T]` union, null where there are no attributes.
fn write_attribute(
    attributes: Option<&PhoneAttributes>,
    country: Option<Country>,
    attribute: Attribute,
    out: &mut Vec<u8>,
) {
    if attribute == Attribute::Country {
        match country {
            None => write_long(out, 0),
            Some(country) => {
                write_long(out, 1);
                write_bytes(out, country.as_str().as_bytes());
            }
        }
        return;
    }
    let Some(attributes) = attributes else {
        write_long(out, 0);
        return;
    };
    match attribute {
        Attribute::Region => match attributes.region {
            None => write_long(out, 0),
            Some(region) => {
                write_long(out, 1);
                write_bytes(out, region.as_bytes());
            }
        },
        Attribute::CallingCode => {
            write_long(out, 1);
            write_long(out, i64::from(attributes.calling_code));
        }
        Attribute::NumberType => {
            write_long(out, 1);
            write_bytes(out, attributes.number_type.as_str().as_bytes());
        }
        Attribute::Country => unreachable!("written above"),
    }
}

/// For a sealed leaf's branch of a nullable union, the union's null branch (what a withheld
/// subject's record writes instead of the envelope).
fn sealed_to_null(branches: &[Step], chosen: &Step) -> Option<usize> {
    match chosen {
        Step::Leaf(leaf) if leaf.action == Action::Encrypt => branches.iter().position(|b| {
            matches!(
                b,
                Step::Copy {
                    shape: Shape::Null,
                    ..
                }
            )
        }),
        _ => None,
    }
}

/// Which field of a failed copy run failed: the run is skipped again field by field (this is
/// the error path only, so the hot path carries no per-field bookkeeping).
fn locate<'p>(shape: &Shape, paths: &'p [Box<str>], cur: &Cursor<'_>, start: usize) -> &'p str {
    if let Shape::Seq(fields) = shape {
        if fields.len() == paths.len() {
            let mut again = cur.rewound(start);
            for (field, path) in fields.iter().zip(paths) {
                if skip(field, &mut again).is_err() {
                    return path;
                }
            }
        }
    }
    paths.first().map_or("", |p| p)
}

/// Moves the cursor past one value of `shape`, checking every string is UTF-8.
fn skip(shape: &Shape, cur: &mut Cursor<'_>) -> Result<(), ErrorKind> {
    skip_as::<true>(shape, cur)
}

/// Moves the cursor past one value of `shape`; strings are checked for UTF-8 where `CHECK`
/// (bytes from outside), not in output this process wrote.
fn skip_as<const CHECK: bool>(shape: &Shape, cur: &mut Cursor<'_>) -> Result<(), ErrorKind> {
    match shape {
        Shape::Null => {}
        Shape::Boolean => {
            if cur.take(1)?[0] > 1 {
                return Err(ErrorKind::OutOfRange);
            }
        }
        Shape::Int => {
            i32::try_from(cur.long()?).map_err(|_| ErrorKind::OutOfRange)?;
        }
        Shape::Varint => {
            cur.long()?;
        }
        Shape::Enum(symbols) => {
            let index = cur.long()?;
            if !usize::try_from(index).is_ok_and(|i| i < *symbols) {
                return Err(ErrorKind::OutOfRange);
            }
        }
        Shape::Bytes => {
            cur.bytes()?;
        }
        Shape::String => {
            let bytes = cur.bytes()?;
            if CHECK {
                std::str::from_utf8(bytes).map_err(|_| ErrorKind::InvalidUtf8)?;
            }
        }
        Shape::Fixed(n) => {
            cur.take(*n)?;
        }
        // Block byte sizes, when given, are not used to jump ahead: every string inside is
        // still checked.
        Shape::Array(item) => loop {
            let (count, size) = cur.block()?;
            if count == 0 {
                break;
            }
            let start = cur.pos();
            for _ in 0..count {
                skip_as::<CHECK>(item, cur)?;
            }
            cur.end_block(start, size)?;
        },
        Shape::Map(value) => loop {
            let (count, size) = cur.block()?;
            if count == 0 {
                break;
            }
            let start = cur.pos();
            for _ in 0..count {
                skip_as::<CHECK>(&Shape::String, cur)?;
                skip_as::<CHECK>(value, cur)?;
            }
            cur.end_block(start, size)?;
        },
        Shape::Union(branches) => {
            let index = cur.long()?;
            let branch = usize::try_from(index)
                .ok()
                .and_then(|i| branches.get(i))
                .ok_or(ErrorKind::BadUnion)?;
            skip_as::<CHECK>(branch, cur)?;
        }
        Shape::Seq(fields) => {
            for field in fields {
                skip_as::<CHECK>(field, cur)?;
            }
        }
    }
    Ok(())
}
