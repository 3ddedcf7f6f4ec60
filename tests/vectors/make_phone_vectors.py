#!/usr/bin/env python3
"""Phone canonical forms from the reference: Python's `phonenumbers`, a faithful port of
Google's libphonenumber (spec §3).

For 15 regions, a handful of numbers each (the metadata's example numbers and seeded
variations of them), written in every shape a switch, an app or a person writes them, and
parsed by the reference with a default region: the number's own and, for the shapes that
need one, a foreign one too. Junk that is not a number comes out as `phone-raw` with the
input trimmed. Its output, phone_vectors.json beside it, is checked in; tests/vectors.rs
checks the Rust canonicalization against every case. Re-run only for a deliberate metadata
upgrade (tokens of the numbers whose canonical form changes change with it):

    pip install phonenumbers==9.0.43
    python3 tests/vectors/make_phone_vectors.py > tests/vectors/phone_vectors.json
"""
import json
import random
import re

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

REGIONS = ["ID", "US", "GB", "DE", "BR", "IN", "RU", "AR", "MX", "IT", "JP", "SG", "FR", "AU", "NG"]
# A foreign default region for each shape that is read differently by region.
FOREIGN = {r: REGIONS[(i + 5) % len(REGIONS)] for i, r in enumerate(REGIONS)}
IDD_CANDIDATES = ["00", "011", "010", "001", "008", "009", "0011", "0015", "810", "000"]
FULL_WIDTH = str.maketrans("0123456789+", "０１２３４５６７８９＋")
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
JUNK = [
    "", " ", "anonymous", "  anonymous ", "Unknown", "private", "*100#", "*#06#", "112", "911",
    "+", "++62", "0", "12", "+00 123", "+999 1234567", "abc-def-ghij", "tel:", "00", "+62",
    "1-800-FLOWERS", "+1 (800) FLOWERS", "0812-3456-7890-1234-5678-9012", "+6281234567890123456",
    "٠", "＋", "--", "(0)", "x123", "#31#0812345678",
]


def idd_for(region: str) -> str:
    """A digit string the region dials to reach another country."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    preferred = meta.preferred_international_prefix
    if preferred and preferred.replace("~", "").isdigit():
        return preferred.replace("~", "")
    for candidate in IDD_CANDIDATES:
        if re.fullmatch(meta.international_prefix, candidate):
            return candidate
    raise SystemExit(f"no IDD for {region}")


def numbers_for(region: str, rng: random.Random):
    """Example numbers of the region and seeded variations of their last digits."""
    found = []
    for kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE, PhoneNumberType.TOLL_FREE):
        example = phonenumbers.example_number_for_type(region, kind)
        if example is None:
            continue
        found.append(example)
        nsn = phonenumbers.national_significant_number(example)
        for _ in range(2):
            tail = "".join(rng.choice("0123456789") for _ in range(4))
            varied = nsn[:-4] + tail
            number = phonenumbers.parse("+%d%s" % (example.country_code, varied), None)
            found.append(number)
    return found


def regroup(digits: str) -> str:
    """The digits in groups of 3 and 4 with mixed separators, as people retype them."""
    groups, i, sizes = [], 0, [3, 4]
    while i < len(digits):
        size = sizes[len(groups) % 2]
        groups.append(digits[i : i + size])
        i += size
    return " ".join(groups[:2]) + ("-" + ".".join(groups[2:]) if groups[2:] else "")


def shapes(number, region: str):
    """(shape name, text) of one number as its own region writes it."""
    cc = number.country_code
    nsn = phonenumbers.national_significant_number(number)
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    intl = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    national_digits = re.sub(r"\D", "", national)
    yield "e164", e164
    yield "international", intl
    yield "national", national
    yield "national-digits", national_digits
    yield "regrouped", regroup(national_digits)
    yield "regrouped-international", "+" + str(cc) + " " + regroup(nsn)
    yield "idd-00", "00" + str(cc) + nsn
    yield "idd-region", idd_for(region) + " " + str(cc) + " " + nsn
    yield "country-code-no-plus", str(cc) + nsn
    yield "tel-uri", phonenumbers.format_number(number, PhoneNumberFormat.RFC3966)
    yield "extension", intl + " ext. 1234"
    yield "extension-x", national + " x56"
    yield "full-width", e164.translate(FULL_WIDTH)
    yield "full-width-international", intl.translate(FULL_WIDTH)
    yield "arabic-indic", national.translate(ARABIC_INDIC)
    yield "arabic-indic-e164", "+" + e164[1:].translate(ARABIC_INDIC)
    yield "blanks", "  " + intl + "\t"
    yield "brackets", "(" + national_digits[:3] + ") " + national_digits[3:]


def reference(text: str, region: str):
    """(class, canonical) as the reference gives them."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return "phone-raw", text.strip()
    return "phone", phonenumbers.format_number(number, PhoneNumberFormat.E164)


def main():
    rng = random.Random(20261126)
    cases = []
    seen = set()

    def add(shape, region, text):
        if (region, text) in seen:
            return
        seen.add((region, text))
        cls, canonical = reference(text, region)
        cases.append({"region": region, "shape": shape, "input": text, "class": cls, "canonical": canonical})

    for region in REGIONS:
        for number in numbers_for(region, rng):
            for shape, text in shapes(number, region):
                add(shape, region, text)
                # The same text read in another country: national shapes change meaning.
                add(shape, FOREIGN[region], text)
        for text in JUNK:
            add("junk", region, text)
    print(json.dumps({
        "reference": "phonenumbers " + phonenumbers.__version__,
        "regions": REGIONS,
        "cases": cases,
    }, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
