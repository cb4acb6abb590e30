"""English transcript cleaning, as NeMo's ``ENCharParser`` does it (``cleaners.clean_text``).

Steps, in NeMo's order: transliterate to ASCII, lower-case, collapse whitespace, spell out numbers (cardinals,
ordinals, decimals, times, dollar amounts), expand common abbreviations (``dr.`` -> ``doctor``), spell out ``+ & %``,
turn every other punctuation mark that is not a label into a space, collapse whitespace and strip.

NeMo uses the ``text_unidecode`` and ``inflect`` packages for the first and the number step. Numbers are written out
here with :func:`number_to_words`, which follows inflect's default output (``"one thousand, two hundred and
thirty-four"``, ``"three point one four"``, ``"twenty-first"``). Transliteration uses Unicode decomposition plus a
small table for Latin letters (``ß``, ``æ``, ``ø``, ...) and typographic punctuation; characters from other scripts
are dropped, where unidecode would romanise them.
"""

from __future__ import annotations

import logging
import re
import string
import unicodedata
from collections.abc import Iterable

__all__ = ["clean_text", "number_to_words", "to_ascii", "punctuation_table", "PUNCTUATION_TO_REPLACE"]

logger = logging.getLogger(__name__)

PUNCTUATION_TO_REPLACE = {"+": "plus", "&": "and", "%": "percent"}

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ["", "thousand", "million", "billion", "trillion", "quadrillion", "quintillion", "sextillion",
           "septillion", "octillion", "nonillion", "decillion"]
_ORDINAL_ENDINGS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                    "nine": "ninth", "twelve": "twelfth"}

_ASCII_TABLE = str.maketrans({
    "ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "œ": "oe", "Œ": "OE", "ł": "l", "Ł": "L", "đ": "d",
    "Đ": "D", "þ": "th", "Þ": "Th", "ð": "d", "Ð": "D", "ı": "i", "‘": "'", "’": "'", "‚": ",", "‛": "'",
    "“": '"', "”": '"', "„": '"', "‟": '"', "′": "'", "″": '"', "–": "-", "—": "-", "―": "-", "‐": "-",
    "‑": "-", "…": "...", "«": "<<", "»": ">>", "€": "EUR", "£": "PS", "\u00a0": " ",
})

_NUM_CHECK = re.compile(r"([$]?)(^|\s)(\S*[0-9]\S*)(?=(\s|$)((\S*)(\s|$))?)")
_TIME_CHECK = re.compile(r"([0-9]{1,2}):([0-9]{2})(am|pm)?")
_CURRENCY_CHECK = re.compile(r"\$")
_ORD_CHECK = re.compile(r"([0-9]+)(st|nd|rd|th)")
_THREE_CHECK = re.compile(r"([0-9]{3})([.,][0-9]{1,2})?([!.?])?$")
_DECIMAL_CHECK = re.compile(r"([.,][0-9]{1,2})$")

_ABBREVIATIONS = [(re.compile(r"\b%s\." % short), long) for short, long in [
    ("ms", "miss"), ("mrs", "misess"), ("mr", "mister"), ("messrs", "messeurs"), ("dr", "doctor"),
    ("drs", "doctors"), ("st", "saint"), ("co", "company"), ("jr", "junior"), ("sr", "senior"), ("rev", "reverend"),
    ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"), ("maj", "major"), ("col", "colonel"),
    ("lt", "lieutenant"), ("gen", "general"), ("prof", "professor"), ("lb", "pounds"), ("rep", "representative"),
    ("ave", "avenue"), ("etc", "et cetera"), ("jan", "january"), ("feb", "february"), ("mar", "march"),
    ("apr", "april"), ("jun", "june"), ("jul", "july"), ("aug", "august"), ("sep", "september"),
    ("oct", "october"), ("nov", "november"), ("dec", "december"),
]]


def to_ascii(text: str) -> str:
    """Latin letters without accents, typographic quotes and dashes as ASCII; other non-ASCII characters dropped."""
    text = unicodedata.normalize("NFKD", text.translate(_ASCII_TABLE))
    return "".join(c for c in text if ord(c) < 128)


def _below_thousand(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    if rest < 20:
        tail = _ONES[rest] if rest else ""
    else:
        tens, ones = divmod(rest, 10)
        tail = _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    if hundreds:
        return f"{_ONES[hundreds]} hundred" + (f" and {tail}" if tail else "")
    return tail


def _cardinal_groups(digits: str) -> list[str]:
    """Words per non-zero group of three digits, most significant first (``["one thousand", "two hundred"]``)."""
    n = int(digits)
    if n == 0:
        return ["zero"]
    groups, scale = [], 0
    while n:
        n, low = divmod(n, 1000)
        if low:
            if scale >= len(_SCALES):
                raise ValueError(f"number too large to spell out: {digits}")
            groups.append(_below_thousand(low) + (f" {_SCALES[scale]}" if scale else ""))
        scale += 1
    groups.reverse()
    # A last group below one hundred is joined with "and" rather than a comma ("one thousand and one").
    if len(groups) > 1 and " " not in groups[-1]:
        groups[-2:] = [f"{groups[-2]} and {groups[-1]}"]
    return groups


def _ordinal(words: str) -> str:
    head, _, last = words.rpartition(" ")
    if last.endswith("ty"):
        last = last[:-2] + "tieth"
    else:
        stem, hyphen, unit = last.rpartition("-")
        unit = _ORDINAL_ENDINGS.get(unit, unit + "th")
        last = stem + hyphen + unit
    return f"{head} {last}" if head else last


def number_to_words(number: str) -> str:
    """Spells out a number written in digits, as ``inflect.engine().number_to_words`` does by default.

    Non-digits other than one decimal point, a leading sign and an ordinal suffix are ignored (``"1,000"`` is one
    thousand). Examples: ``"1234"`` -> ``"one thousand, two hundred and thirty-four"``, ``"3.05"`` -> ``"three point
    zero five"``, ``"21st"`` -> ``"twenty-first"``, ``"-7"`` -> ``"minus seven"``.
    """
    text = number.strip()
    sign = {"+": "plus ", "-": "minus "}.get(text[:1], "")
    ordinal = text[-2:].lower() in ("st", "nd", "rd", "th")
    if ordinal:
        text = text[:-2]
    whole, point, fraction = text.partition(".")
    whole_digits = re.sub(r"\D", "", whole) or "0"
    words = ", ".join(_cardinal_groups(whole_digits))
    if ordinal:
        words = _ordinal(words)
    if point:
        fraction_digits = re.sub(r"\D", "", fraction)
        words += " point" + "".join(f" {_ONES[int(d)]}" for d in fraction_digits)
    return sign + words


class _NumberSpeller:
    """NeMo's ``NumberCleaner``: called on each number token of one string, in order (it carries state)."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.currency = None

    def _final(self, whole: str, decimal: str | None) -> str:
        if self.currency:
            out = number_to_words(whole) + (" dollar" if whole == "1" else " dollars")
            if decimal:
                out += " and " + number_to_words(decimal) + (" cent" if whole == decimal else " cents")
        elif decimal:
            out = number_to_words(f"{whole}.{decimal}")
        else:
            out = re.sub(r"[0-9,]+", lambda m: f" {number_to_words(m.group(0))} ", whole)
        self.pending, self.currency = [], None
        return out

    def __call__(self, match: re.Match) -> str:
        space, number = match.group(2), match.group(3)
        time = _TIME_CHECK.match(number)
        if time:
            minutes = f" {number_to_words(time.group(2))}" if int(time.group(2)) else ""
            ampm = f" {time.group(3)}" if time.group(3) else ""
            return space + number_to_words(time.group(1)) + minutes + ampm
        ordinal = _ORD_CHECK.match(number)
        if ordinal:
            return space + number_to_words(ordinal.group(0))
        if self.currency is None:
            self.currency = match.group(1) or _CURRENCY_CHECK.match(number)
        if _THREE_CHECK.match(match.group(6) or ""):
            self.pending.append(number)
            return " "
        whole = "".join(self.pending) + number
        decimal = None
        found = _DECIMAL_CHECK.search(whole)
        if found:
            decimal = found.group(1)[1:]
            whole = whole[: -len(decimal) - 1]
        whole = whole.replace(".", "")
        return space + self._final(whole, decimal)


def punctuation_table(labels: Iterable[str]) -> dict[int, str]:
    """``str.translate`` table turning ASCII punctuation into spaces, except ``+ & %`` and the labels' characters."""
    keep = set(PUNCTUATION_TO_REPLACE) | set("".join(labels))
    marks = "".join(c for c in string.punctuation if c not in keep)
    return str.maketrans(marks, " " * len(marks))


def clean_text(text: str, table: dict[int, str] | None) -> str:
    """NeMo's ``clean_text`` for English (see the module docstring).

    Args:
        text: a raw transcript.
        table: from :func:`punctuation_table` (``None`` keeps punctuation other than ``+ & %``).
    """
    if re.search(r"[£€]", text):
        logger.warning("Your transcript contains one of '£' or '€' which we do not currently handle")
    text = to_ascii(text).lower()
    text = re.sub(r"\s+", " ", text)
    text = _NUM_CHECK.sub(_NumberSpeller(), text)
    for pattern, replacement in _ABBREVIATIONS:
        text = pattern.sub(replacement, text)
    for mark, word in PUNCTUATION_TO_REPLACE.items():
        text = text.replace(mark, f" {word} ")
    if table:
        text = text.translate(table)
    return re.sub(r"\s+", " ", text).strip()
