#!/usr/bin/env python3
"""The phone fast path's tables (src/phone/metadata.rs), from libphonenumber's own metadata.

Python's `phonenumbers` 9.0.42 carries libphonenumber 9.0.42's metadata, the version the
pinned `rlibphonenumber` 2.2.15 embeds but keeps private. This script writes, for every
territory (the 245 regions and the 9 non-geographic calling codes), exactly the fields the fast
path reads (src/phone/fast.rs), copied, never interpreted:

- the country calling code, and for each calling code the territory whose metadata reads
  `+` numbers (libphonenumber's "main country" for the code: the first region listed);
- the international (IDD) prefix pattern;
- the national prefix for parsing and its transform rule (`\\1` rewritten `${1}`, Rust's regex
  replacement syntax);
- the general description: its national number pattern, possible lengths and local-only lengths;
- for the derived attributes (src/phone/attributes.rs): the leading digits that tell regions of a
  shared calling code apart, whether the mobile and fixed-line patterns are the same, each
  number type's description (pattern and possible lengths) in the order libphonenumber's
  `getNumberTypeHelper` tries them, and every region of each calling code, main region first.

Its output is checked in. tests/phone_fast.rs re-runs it in the project's Python environment and
fails if the checked-in file differs, and fails if its version is not the one `--version`
reports. Re-run for a deliberate metadata upgrade, together with the `rlibphonenumber` pin:

    pip install phonenumbers==9.0.42
    python3 tests/vectors/make_phone_tables.py > src/phone/metadata.rs
"""
import re

import phonenumbers
from phonenumbers import PhoneMetadata

VERSION = "9.0.42"


def rust_str(text):
    """A Rust raw string literal holding `text` exactly."""
    hashes = "#"
    while '"' + hashes in text:
        hashes += "#"
    return f'r{hashes}"{text}"{hashes}'


def option(text):
    return "None" if text is None else f"Some({rust_str(text)})"


def lengths(values):
    return "&[" + ", ".join(str(v) for v in values) + "]"


def transform_rule(rule):
    # Python's \1 group references, as Rust's regex crate writes them.
    return None if rule is None else re.sub(r"\\(\d)", r"${\1}", rule)


# The number types in the order libphonenumber's `getNumberTypeHelper` tries them, with the
# name of their variant in src/phone/attributes.rs.
TYPES = [
    ("premium_rate", "PremiumRate"),
    ("toll_free", "TollFree"),
    ("shared_cost", "SharedCost"),
    ("voip", "Voip"),
    ("personal_number", "PersonalNumber"),
    ("pager", "Pager"),
    ("uan", "Uan"),
    ("voicemail", "Voicemail"),
    ("fixed_line", "FixedLine"),
    ("mobile", "Mobile"),
]


def type_descs(meta):
    out = []
    for attr, variant in TYPES:
        desc = getattr(meta, attr)
        if desc is None:
            continue
        # Every description the metadata has carries a pattern and its lengths (checked here,
        # so that an upgrade that changes this is seen).
        assert desc.national_number_pattern and desc.possible_length, (meta.id, attr)
        assert all(0 < n < 64 for n in desc.possible_length), (meta.id, attr)
        out.append(
            f"            TypeDesc {{ kind: NumberType::{variant}, pattern: {rust_str(desc.national_number_pattern)}, lengths: {lengths(desc.possible_length)} }},\n"
        )
    return "".join(out)


def territory(meta):
    general = meta.general_desc
    return (
        "    Territory {\n"
        f"        id: {rust_str(meta.id)},\n"
        f"        country_code: {meta.country_code},\n"
        f"        international_prefix: {option(meta.international_prefix)},\n"
        f"        national_prefix_for_parsing: {option(meta.national_prefix_for_parsing)},\n"
        f"        national_prefix_transform_rule: {option(transform_rule(meta.national_prefix_transform_rule))},\n"
        f"        general_pattern: {rust_str(general.national_number_pattern)},\n"
        f"        possible_lengths: {lengths(general.possible_length)},\n"
        f"        local_only_lengths: {lengths(general.possible_length_local_only)},\n"
        f"        leading_digits: {option(meta.leading_digits)},\n"
        f"        same_mobile_and_fixed_line: {'true' if meta.same_mobile_and_fixed_line_pattern else 'false'},\n"
        "        types: &[\n"
        f"{type_descs(meta)}"
        "        ],\n"
        "    },\n"
    )


def main():
    assert phonenumbers.__version__ == VERSION, f"phonenumbers {phonenumbers.__version__}, want {VERSION}"
    regions = sorted(r for r in phonenumbers.SUPPORTED_REGIONS)
    metas = [PhoneMetadata.metadata_for_region(r) for r in regions]
    metas += [PhoneMetadata.metadata_for_nongeo_region(cc) for cc in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS)]
    index = {}
    for i, meta in enumerate(metas):
        key = meta.id if meta.id != "001" else meta.country_code
        index[key] = i
    calling_codes = []
    for cc in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE):
        main_region = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[cc][0]
        calling_codes.append((cc, index[cc] if main_region == "001" else index[main_region]))

    out = []
    out.append(f"// @generated by tests/vectors/make_phone_tables.py from phonenumbers {VERSION}: do not edit.\n")
    out.append("//! libphonenumber's metadata, the fields the phone fast path reads (see `super::fast`)\n")
    out.append("//! and the derived attributes (see `super::attributes`).\n")
    out.append("//!\n")
    out.append("//! Copied from Python's `phonenumbers`, which carries the same libphonenumber release as\n")
    out.append("//! the pinned `rlibphonenumber`; `tests/phone_fast.rs` regenerates and compares it.\n\n")
    out.append("use super::attributes::{NumberType, TypeDesc};\n")
    out.append("use super::fast::Territory;\n\n")
    out.append("/// The libphonenumber release the tables come from.\n")
    out.append(f'pub const METADATA_VERSION: &str = "{VERSION}";\n\n')
    out.append("/// Every territory: the regions sorted by code, then the non-geographic calling codes (`001`).\n")
    out.append("pub static TERRITORIES: &[Territory] = &[\n")
    out.extend(territory(m) for m in metas)
    out.append("];\n\n")
    out.append(f"/// Regions in [`TERRITORIES`] (the first {len(regions)} entries, sorted by code).\n")
    out.append(f"pub const REGION_COUNT: usize = {len(regions)};\n\n")
    out.append("/// Each country calling code, sorted, with the index in [`TERRITORIES`] of the territory\n")
    out.append("/// whose metadata reads `+` numbers with that code (libphonenumber's main country for it).\n")
    out.append("pub static CALLING_CODES: &[(u16, u16)] = &[\n")
    for cc, i in calling_codes:
        out.append(f"    ({cc}, {i}),\n")
    out.append("];\n\n")
    out.append("/// The calling codes shared by more than one region, with the index in [`TERRITORIES`] of\n")
    out.append("/// each of them, main region first (the order libphonenumber tries them in).\n")
    out.append("pub static SHARED_CALLING_CODES: &[(u16, &[u16])] = &[\n")
    for cc in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE):
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[cc]
        if len(regions) > 1:
            out.append(f"    ({cc}, &[{', '.join(str(index[r]) for r in regions)}]),\n")
    out.append("];\n")
    print("".join(out), end="")


if __name__ == "__main__":
    main()
