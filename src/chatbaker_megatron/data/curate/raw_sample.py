"""The raw demo corpus: the bundled clean corpus plus planted faults, and their ground truth.

`python -m chatbaker_megatron.data.curate.raw_sample DIR` writes, deterministically:

  raw_a.jsonl, raw_b.jsonl.gz  the clean documents and the faulty ones, spread over both
                               (a near duplicate often sits in the other file than its original)
  raw_other.parquet            other-language documents (Japanese, Chinese, Russian, ...)
  raw_bad.jsonl                bad records: invalid JSON, a cp949 line, a missing and an
                               empty text field, next to a few good records
  raw_empty.jsonl              an empty shard
  truth.json                   per document id: what was planted (benchmarks/curate.py and
                               the tests measure precision and recall against it)

Planted: exact duplicates, near duplicates (word edits; their true word
5-gram Jaccard similarity is recorded), boilerplate lines, mixed-language
and other-language documents, PII of every kind the scrubber knows (valid
RRN check digits, Luhn-valid cards) next to look-alikes that must survive
(wrong check digits, dates, private IPs), junk documents. It is generated
rather than shipped: ~0.8 MB of derived text would double the wheel's
samples, and the generator is the documentation of what each fault is.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import sys
from importlib.resources import files
from typing import Any

from datatrove.utils.text import TextNormConfig, ngrams, simplify_text

from chatbaker_megatron.data.curate.pii import RRN_WEIGHTS
from chatbaker_megatron.data.curate.words import EojeolTokenizer

SEED = 20240601
SAMPLES = files("chatbaker_megatron.data.demo") / "samples"

OTHER_LANGUAGE = {
    "ja": "東京は日本の首都であり、世界でも有数の大都市です。多くの人々が毎日電車で通勤し、"
    "朝の駅はとても混雑します。春には桜が咲き、公園は花見を楽しむ人々でいっぱいになります。"
    "夏は暑く湿度が高いですが、秋になると涼しくなり、紅葉が美しい季節を迎えます。",
    "zh": "北京是中国的首都，也是一座历史悠久的城市。故宫、天坛和长城吸引了来自世界各地的游客。"
    "近年来，城市的交通和环境都有了很大的改善，地铁线路不断增加，人们出行更加方便。",
    "ru": "Москва является столицей России и крупнейшим городом страны. Здесь находятся Кремль, "
    "Красная площадь и многие известные музеи. Зимой в городе бывает очень холодно, "
    "а летом погода обычно тёплая и солнечная.",
    "el": "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας και μία από τις αρχαιότερες πόλεις του κόσμου. "
    "Η Ακρόπολη και ο Παρθενώνας βρίσκονται στο κέντρο της πόλης και τους επισκέπτονται "
    "εκατομμύρια τουρίστες κάθε χρόνο.",
    "th": "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย มีประชากรหลายล้านคน "
    "มีวัดที่สวยงามมากมาย และอาหารริมทางที่มีชื่อเสียงไปทั่วโลก",
    "ar": "القاهرة هي عاصمة مصر وأكبر مدنها. يقع نهر النيل في قلب المدينة، "
    "وتوجد بالقرب منها أهرامات الجيزة التي يزورها ملايين السياح كل عام.",
}
BOILERPLATE_LINES = (
    "이 사이트는 쿠키를 사용합니다. 계속 이용하시면 동의한 것으로 간주합니다.",
    "Copyright ⓒ 한빛일보. 무단 전재 및 재배포 금지.",
    "로그인 | 회원가입 | 이용약관 | 개인정보처리방침",
    "▶ 관련기사 더보기",
    "This website uses cookies to improve your experience.",
    "© 2024 Example Media. All rights reserved.",
    "Read our Privacy Policy and Terms of Use.",
)
JUNK = (
    "ㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋㅋ ㅎㅎㅎㅎㅎㅎㅎㅎㅎㅎㅎㅎㅎㅎ ㅠㅠㅠㅠㅠㅠㅠㅠㅠ",
    "클릭",
    "$$$ ### @@@ !!! %%% ^^^ &&& *** ((( ))) ### $$$ @@@ !!! ### ### ### $$$ @@@",
    "010 020 030 040 050 060 070 080 090 100 110 120 130 140 150 160 170 180 190 200 "
    "210 220 230 240 250 260 270 280 290 300 310 320 330 340 350 360 370 380 390 400",
    "\n".join(["최저가 할인 특가 쿠폰 무료배송 당일발송 정품 인기상품 추천 베스트 신상품"] * 12),
    "\n".join(f"- 상품 {i} 바로가기" for i in range(30)),
    "\n".join(["더 보기..."] * 10 + ["계속 읽기..."] * 10),
    "\n".join(["Buy now! Best price! Free shipping! Limited offer!"] * 15),
    "할인 특가 쿠폰 무료배송 정품 인기상품 추천 베스트 신상품 최저가 무료 이벤트 경품 "
    "당첨 대박 혜택 적립금 회원 가입 로그인 장바구니 주문 배송 조회 교환 반품 고객센터 "
    "공지사항 자주묻는질문 상품문의 리뷰 평점 별점 구매후기 포토리뷰 동영상 라이브",
    "lorem ipsum " * 3 + "# # # # # # # # # # # # # # # # # # # # # # #",
)
# (text, kind): each must be replaced; each look-alike must survive.
PII_PLANTS = (
    ("010-2345-6789", "phone"),
    ("01087654321", "phone"),
    ("02-312-4567", "phone"),
    ("031-987-6543", "phone"),
    ("(051) 745-1234", "phone"),
    ("070-4321-8765", "phone"),
    ("+82-10-3456-7890", "phone"),
    ("+82 2 3456 7890", "phone"),
    ("+1 415 555 0132", "phone"),
    ("+44 20 7946 0958", "phone"),
    ("hong.gildong@example.co.kr", "email"),
    ("jane_doe+news@mail.example.com", "email"),
    ("4111 1111 1111 1111", "card"),
    ("5500-0000-0000-0004", "card"),
    ("3782 822463 10005", "card"),
    ("8.8.4.4", "ip"),
    ("203.0.114.77", "ip"),
    ("2001:4860:4860::8844", "ip"),
)
LOOK_ALIKES = (
    "4111 1111 1111 1112",  # fails Luhn
    "2010-12-31",  # a date
    "192.168.0.10",  # private address
    "127.0.0.1",
    "012-3456-7890",  # no such prefix
    "제1809890호",  # a bill number
    "3.12.1",  # a version
)


def _rrn(rng: random.Random, valid: bool) -> str:
    yy, mm, dd = rng.randint(50, 99), rng.randint(1, 12), rng.randint(1, 28)
    digits = [int(c) for c in f"{yy:02d}{mm:02d}{dd:02d}"] + [rng.choice((1, 2))]
    digits += [rng.randint(0, 9) for _ in range(5)]
    check = (11 - sum(d * w for d, w in zip(digits, RRN_WEIGHTS)) % 11) % 10
    last = check if valid else (check + rng.randint(1, 9)) % 10
    text = "".join(map(str, digits + [last]))
    return f"{text[:6]}-{text[6:]}"


def shingles(text: str, n: int = 5) -> set[str]:
    """Word n-grams of the simplified text: the sets MinHash estimates the Jaccard of."""
    words = EojeolTokenizer().word_tokenize(simplify_text(text, TextNormConfig()))
    return {" ".join(g) for g in ngrams(words, n)}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y) if x | y else 1.0


def _edit(rng: random.Random, text: str, rate: float) -> str:
    """Delete, duplicate or swap a `rate` share of the (space-separated) words."""
    words = text.split(" ")
    for _ in range(max(1, round(len(words) * rate))):
        i = rng.randrange(len(words) - 1)
        op = rng.choice(("delete", "duplicate", "swap"))
        if op == "delete":
            del words[i]
        elif op == "duplicate":
            words.insert(i, words[i])
        else:
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def _clean_documents() -> list[dict[str, Any]]:
    docs = []
    for lang in ("ko", "en"):
        with (SAMPLES / f"pretrain_{lang}.jsonl").open(encoding="utf-8") as f:
            for i, line in enumerate(f):
                record = json.loads(line)
                docs.append(
                    {"id": f"{lang}-{i:04d}", "text": record["text"], "source": record["source"]}
                )
    return docs


def make_raw_sample(out_dir: str, seed: int = SEED) -> dict[str, dict[str, Any]]:
    """Write the raw sample files and truth.json into `out_dir`; returns the truth."""
    rng = random.Random(seed)
    clean = _clean_documents()
    truth: dict[str, dict[str, Any]] = {
        d["id"]: {"kind": "clean", "language": d["id"][:2]} for d in clean
    }
    planted: list[dict[str, Any]] = []
    long_docs = [d for d in clean if len(d["text"].split()) >= 80]

    for i, original in enumerate(rng.sample(clean, 20)):
        planted.append({**original, "id": f"exact-{i:02d}"})
        truth[f"exact-{i:02d}"] = {
            "kind": "exact_dup",
            "of": original["id"],
            "language": original["id"][:2],
        }
    for i, original in enumerate(rng.sample(long_docs, 60)):
        text = _edit(rng, original["text"], rate=rng.choice((0.005, 0.01, 0.02, 0.03, 0.05)))
        doc_id = f"near-{i:02d}"
        planted.append({**original, "id": doc_id, "text": text})
        truth[doc_id] = {
            "kind": "near_dup",
            "of": original["id"],
            "jaccard": round(jaccard(original["text"], text), 4),
            "language": original["id"][:2],
        }
    for i, original in enumerate(rng.sample(long_docs, 15)):
        lines = rng.sample(BOILERPLATE_LINES, 3)
        text = "\n".join([lines[0], original["text"], lines[1], lines[2]])
        doc_id = f"boiler-{i:02d}"
        planted.append({"id": doc_id, "text": text, "source": "crawl"})
        truth[doc_id] = {"kind": "boilerplate", "lines": lines, "language": original["id"][:2]}
    ko_docs = [d for d in long_docs if d["id"].startswith("ko")]
    en_docs = [d for d in long_docs if d["id"].startswith("en")]
    for i in range(5):
        ko, en = rng.choice(ko_docs), rng.choice(en_docs)
        planted.append(
            {
                "id": f"mixed-ko-{i}",
                "text": ko["text"] + "\n\n" + en["text"][:200],
                "source": "crawl",
            }
        )
        truth[f"mixed-ko-{i}"] = {"kind": "mixed", "language": "ko"}
        planted.append(
            {
                "id": f"mixed-en-{i}",
                "text": en["text"] + "\n\n" + ko["text"][:60],
                "source": "crawl",
            }
        )
        truth[f"mixed-en-{i}"] = {"kind": "mixed", "language": "en"}
    for i, junk in enumerate(JUNK):
        planted.append({"id": f"junk-{i:02d}", "text": junk, "source": "crawl"})
        truth[f"junk-{i:02d}"] = {"kind": "junk"}

    pii_hosts = rng.sample(long_docs, 12)
    plants = [(text, kind) for text, kind in PII_PLANTS]
    plants += [(_rrn(rng, valid=True), "rrn") for _ in range(6)]
    looks = list(LOOK_ALIKES) + [_rrn(rng, valid=False) for _ in range(4)]
    for i, host in enumerate(pii_hosts):
        mine = plants[i :: len(pii_hosts)]
        alike = looks[i :: len(pii_hosts)]
        sentence = " ".join(
            f"연락처 {text}." if host["id"].startswith("ko") else f"Contact: {text}."
            for text, _ in mine
        )
        decoys = " ".join(f"({text})" for text in alike)
        doc_id = f"pii-{i:02d}"
        planted.append(
            {"id": doc_id, "text": f"{host['text']}\n\n{sentence} {decoys}", "source": "crawl"}
        )
        truth[doc_id] = {
            "kind": "pii",
            "pii": [list(p) for p in mine],
            "look_alikes": alike,
            "language": host["id"][:2],
        }

    os.makedirs(out_dir, exist_ok=True)
    everything = clean + planted
    rng.shuffle(everything)
    half = len(everything) // 2
    with open(os.path.join(out_dir, "raw_a.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in everything[:half])
    with gzip.open(os.path.join(out_dir, "raw_b.jsonl.gz"), "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in everything[half:])
    _write_other_languages(out_dir, truth)
    _write_bad_records(out_dir, truth)
    open(os.path.join(out_dir, "raw_empty.jsonl"), "w").close()
    with open(os.path.join(out_dir, "truth.json"), "w", encoding="utf-8") as f:
        json.dump(truth, f, ensure_ascii=False, indent=1, sort_keys=True)
    return truth


def _write_other_languages(out_dir: str, truth: dict[str, dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [f"other-{code}" for code in OTHER_LANGUAGE]
    table = pa.table(
        {"id": ids, "text": list(OTHER_LANGUAGE.values()), "source": ["crawl"] * len(ids)}
    )
    pq.write_table(table, os.path.join(out_dir, "raw_other.parquet"))
    for doc_id in ids:
        truth[doc_id] = {"kind": "other_language", "language": "other"}


def _write_bad_records(out_dir: str, truth: dict[str, dict[str, Any]]) -> None:
    good = "국회는 국민의 보통·평등·직접·비밀선거에 의하여 선출된 국회의원으로 구성한다. 국회의원의 수는 법률로 정하되, 200인 이상으로 한다."
    lines = [
        json.dumps({"id": "bad-ok-0", "text": good}, ensure_ascii=False).encode("utf-8"),
        b'{"id": "bad-json", "text": "unterminated',
        json.dumps(
            {"id": "bad-cp949", "text": good.replace("200", "300")}, ensure_ascii=False
        ).encode("cp949"),
        json.dumps({"id": "bad-missing", "body": good}, ensure_ascii=False).encode("utf-8"),
        json.dumps({"id": "bad-empty", "text": "  "}).encode("utf-8"),
    ]
    with open(os.path.join(out_dir, "raw_bad.jsonl"), "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    truth["bad-ok-0"] = {"kind": "clean", "language": "ko"}
    truth["bad-cp949"] = {"kind": "reencoded", "language": "ko"}
    for doc_id in ("bad-json", "bad-missing", "bad-empty"):
        truth[doc_id] = {"kind": "bad_record"}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m chatbaker_megatron.data.curate.raw_sample OUT_DIR")
    made = make_raw_sample(sys.argv[1])
    print(f"raw sample: {len(made)} documents (truth.json) in {sys.argv[1]}")
