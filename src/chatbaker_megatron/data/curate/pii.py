"""PII scrubbing with replacement tokens: e-mail, phones (Korean and international),
주민등록번호 (with its checksum), card numbers (Luhn), IPv4/IPv6.

datatrove's `PIIReplacer` does the replacing (regex + validator) and its
`PIIFormatter` supplies the e-mail and IPv4 patterns and the public-IP
check; what is Korean (phone formats, the resident registration number and
its check digit) and the card/IPv6 validation is here. A match is replaced
only when its validator accepts it, so a 13-digit number with a wrong RRN
check digit, a 16-digit number failing Luhn, or a date such as 2010-12-31
stays as it is. Rules run in this order, each on the previous one's output:
e-mail, RRN (13 digits, before cards: an RRN can pass Luhn), card, phone,
IPv4, IPv6.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection

from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.formatters.pii import PIIFormatter, PIIReplacer, public_ip_validator

TOKENS = {
    "email": "<EMAIL>",
    "rrn": "<RRN>",
    "card": "<CARD>",
    "phone": "<PHONE>",
    "ip": "<IP>",
}
PII_KINDS = tuple(TOKENS)

_DATATROVE_PII = PIIFormatter()
EMAIL_PATTERN = _DATATROVE_PII.emails_replacer.regex.pattern
# Not inside a longer dotted number (a version such as 1.2.3.4.5); a sentence's full stop may follow.
IPV4_PATTERN = r"(?<!\d\.)(?<!\d)" + _DATATROVE_PII.ip_replacer.regex.pattern + r"(?!\.?\d)"

# YYMMDD, an optional dash, the gender/century digit 1-8, six more digits.
RRN_PATTERN = r"(?<![\d-])\d{6}[- ]?[1-8]\d{6}(?![\d-])"
# 13-19 digits: four groups of four plus up to three more (Visa, Master, ...)
# or Amex's 4-6-5; groups separated by one space or dash, or nothing.
CARD_PATTERN = r"(?<![\d-])(?:\d{4}([- ]?)\d{4}\1\d{4}\1\d{1,7}|\d{4}([- ]?)\d{6}\2\d{5})(?![\d-])"
_SEP = r"[-. ]"
PHONE_PATTERN = "|".join(
    [
        # Korean mobile: 010/011/016/017/018/019, separators optional.
        rf"(?<![\d+-])01[016789]{_SEP}?\d{{3,4}}{_SEP}?\d{{4}}(?![\d-])",
        # Korean landline: Seoul 02, regions 031-064, VoIP 070; separators required,
        # the area code may be bracketed: (02) 123-4567.
        rf"(?<![\d+-])(?:\(0(?:2|[3-6][1-5]|70)\) ?|0(?:2|[3-6][1-5]|70){_SEP})\d{{3,4}}{_SEP}\d{{4}}(?![\d-])",
        # International: +country (no leading 0), then groups of digits (the validator counts them).
        rf"(?<![\w+])\+[1-9]\d{{0,2}}(?:{_SEP}?\(\d{{1,4}}\))?(?:{_SEP}?\d{{1,5}}){{2,5}}(?![\d-])",
    ]
)
IPV6_PATTERN = (
    r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:)(?:[0-9A-Fa-f]{0,4}:){1,6}[0-9A-Fa-f]{0,4}(?![\w:]|\.\w)"
)

RRN_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)


def rrn_is_valid(candidate: str, require_checksum: bool = True) -> bool:
    """A real-looking 주민등록번호: a calendar month and day, and (if required) its check digit.

    The check digit is (11 - sum(d_i * w_i) mod 11) mod 10 over the first 12
    digits. Numbers issued since October 2020 end in random digits instead,
    so `require_checksum=False` accepts any date-valid number.
    """
    digits = [int(c) for c in candidate if c.isdigit()]
    month, day = digits[2] * 10 + digits[3], digits[4] * 10 + digits[5]
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return False
    if not require_checksum:
        return True
    check = (11 - sum(d * w for d, w in zip(digits, RRN_WEIGHTS)) % 11) % 10
    return check == digits[12]


def luhn_is_valid(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def phone_is_valid(candidate: str) -> bool:
    """International numbers have 8-15 digits (E.164); the Korean patterns are exact already."""
    if not candidate.startswith("+"):
        return True
    return 8 <= sum(c.isdigit() for c in candidate) <= 15


def ipv6_is_valid(candidate: str, public_only: bool) -> bool:
    """A parseable IPv6 address with at least three written groups: `x[1::2]` (a Python
    slice) parses as an address too."""
    if sum(bool(group) for group in candidate.split(":")) < 3:
        return False
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return not public_only or address.is_global


class PIIScrubber(BaseFormatter):
    """Replaces PII with `<EMAIL>`, `<RRN>`, `<CARD>`, `<PHONE>`, `<IP>`; counts each kind."""

    name = "🔏 PII scrub"

    def __init__(
        self, kinds: Collection[str], rrn_require_checksum: bool = True, ip_public_only: bool = True
    ) -> None:
        super().__init__()
        self.rrn_require_checksum = rrn_require_checksum
        self.ip_public_only = ip_public_only
        rules: dict[str, list[tuple[str, Callable[[str], bool] | None]]] = {
            "email": [(EMAIL_PATTERN, None)],
            "rrn": [(RRN_PATTERN, self._rrn)],
            "card": [(CARD_PATTERN, luhn_is_valid)],
            "phone": [(PHONE_PATTERN, phone_is_valid)],
            "ip": [(IPV4_PATTERN, self._ipv4), (IPV6_PATTERN, self._ipv6)],
        }
        self.replacers = [
            (kind, PIIReplacer(pattern, TOKENS[kind], check))
            for kind in PII_KINDS
            if kind in kinds
            for pattern, check in rules[kind]
        ]

    def _rrn(self, candidate: str) -> bool:
        return rrn_is_valid(candidate, self.rrn_require_checksum)

    def _ipv4(self, candidate: str) -> bool:
        return public_ip_validator(candidate, self.ip_public_only)

    def _ipv6(self, candidate: str) -> bool:
        return ipv6_is_valid(candidate, self.ip_public_only)

    def format(self, text: str) -> str:
        for kind, replacer in self.replacers:
            before = text.count(TOKENS[kind])
            text = replacer.replace(text)
            if replaced := text.count(TOKENS[kind]) - before:
                self.stat_update(f"pii_{kind}", value=replaced)
        return text
