#!/usr/bin/env python3
"""Build the built-in word-pair tasks and the offline judge's lexicons from Debian packages.

    python3 cluster/build_tasks.py --out data [--force]

Sources (Debian 12 packages, installed by cluster/setup.sh):
  wordnet-base           /usr/share/wordnet/{index,data}.{noun,verb,adj,adv}, cntlist.rev
  dict-freedict-eng-fra  /usr/share/dictd/freedict-eng-fra.{index,dict.dz}
  dict-freedict-eng-deu  /usr/share/dictd/freedict-eng-deu.{index,dict.dz}

Writes (function-vector JSON format, sorted, deterministic):
  OUT/tasks/{antonym,synonym,english-french,english-german}.json   [{"input": .., "output": ..}]
  OUT/lexicon/{same names}.json     {"input (lower-case)": ["every acceptable answer", ...]}
  OUT/tasks/MANIFEST.json           per task: pair count, source package + version, sha256s

The rules are documented in docs/tasks.md. Python 3 standard library only. Idempotent: when the
manifest says the outputs were built by this same script from the same package versions and the
files still hash to what it records, nothing is rewritten (use --force to rebuild anyway).
"""
import argparse
import binascii
import gzip
import hashlib
import json
import os
import re
import sys
import unicodedata

WORDNET_DIR = os.environ.get("WORDNET_DIR", "/usr/share/wordnet")
DICTD_DIR = os.environ.get("DICTD_DIR", "/usr/share/dictd")
DPKG_STATUS = "/var/lib/dpkg/status"

MAX_PAIRS = 5000          # per task; inputs ranked by SemCor frequency (see rank_inputs)
TASK_NAMES = ["antonym", "synonym", "english-french", "english-german"]

# A task input: one lower-case English word (letters, optionally joined by single hyphens).
ENGLISH_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")
# A task output in French/German: one word of letters (any case, accents), optionally joined by
# single hyphens; no apostrophes, spaces or digits.
FOREIGN_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")

POS_FILES = [("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv")]
# Tie-break between parts of speech with equal tag counts and sense rank.
POS_ORDER = {"a": 0, "n": 1, "v": 2, "r": 3}
# antonym, similar to (adjective clusters), also see, verb group
USED_POINTERS = frozenset(["!", "&", "^", "$"])
SS_TYPE_DIGIT = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}

_NORM = {}
QUOTES = "\"\u201c\u201d\u201e\u00ab\u00bb"
TRAILING_PUNCT = ".,;:!?"


def norm(s):
    """Normalisation of lexicon keys and values; the Swift judge (Judge.normalize) applies the
    same to inputs and predictions: NFC, lower-case, underscores -> spaces, whitespace trimmed
    and collapsed, double quotes around the text and trailing . , ; : ! ? removed."""
    r = _NORM.get(s)
    if r is None:
        r = " ".join(unicodedata.normalize("NFC", s).lower().replace("_", " ").split())
        if r and (r[0] in QUOTES or r[-1] in QUOTES or r[-1] in TRAILING_PUNCT):
            r = " ".join(r.strip(QUOTES).rstrip(TRAILING_PUNCT).strip(QUOTES).split())
        _NORM[s] = r
    return r


# ------------------------------------------------------------------------------------- WordNet
def semcor_counts(root):
    """WordNet's cntlist.rev: ((lemma, pos, sense number) -> SemCor tag count,
    lemma -> total tag count over its senses), lemmas lower-cased."""
    tagcount, freq = {}, {}
    with open(os.path.join(root, "cntlist.rev"), encoding="latin-1") as f:
        for line in f:
            key, sense_no, cnt = line.split()
            lemma, rest = key.split("%", 1)
            lemma = lemma.lower()
            c = int(cnt)
            k = (lemma, SS_TYPE_DIGIT[rest[0]], int(sense_no))
            tagcount[k] = tagcount.get(k, 0) + c
            freq[lemma] = freq.get(lemma, 0) + c
    return tagcount, freq


class WordNet:
    """The parts of WordNet 3.0's database files the tasks need."""

    def __init__(self, root):
        self.words = {}      # (pos, offset) -> [lemma, ...] (case kept, underscores kept)
        self.ss_type = {}    # (pos, offset) -> "n" | "v" | "a" | "s" | "r"
        self.ptrs = {}       # (pos, offset) -> [(symbol, (pos, offset), src, dst), ...]
        self.senses = {}     # (lemma_lower, pos) -> [(pos, offset), ...] in sense-number order
        self.tagcount = {}   # (lemma_lower, pos, sense_number) -> SemCor tag count
        self.freq = {}       # lemma_lower -> total SemCor tag count
        for pos, name in POS_FILES:
            with open(os.path.join(root, "data." + name), encoding="latin-1") as f:
                for line in f:
                    if line.startswith("  "):
                        continue
                    self._data_line(pos, line)
            with open(os.path.join(root, "index." + name), encoding="latin-1") as f:
                for line in f:
                    if line.startswith("  "):
                        continue
                    t = line.split()
                    lemma, n_syn, p_cnt = t[0], int(t[2]), int(t[3])
                    offs = t[6 + p_cnt: 6 + p_cnt + n_syn]
                    self.senses[(lemma, pos)] = [(pos, int(o)) for o in offs]
        self.tagcount, self.freq = semcor_counts(root)

    def _data_line(self, pos, line):
        t = line.split(" ", 4 + 2 * int(line[14:16], 16))  # off lex ss w_cnt [word lex_id]* rest
        off, ss_type, w_cnt = int(t[0]), t[2], int(t[3], 16)
        words = t[4:4 + 2 * w_cnt:2]
        for k, w in enumerate(words):
            if w.endswith(")"):
                words[k] = w[:w.index("(")]  # adjective markers (a) (p) (ip)
        rest = t[-1]
        ptrs = []
        if "!" in rest or "&" in rest or "^" in rest or "$" in rest:
            r = rest.split(" | ", 1)[0].split()
            p_cnt = int(r[0])
            for i in range(1, 1 + 4 * p_cnt, 4):
                sym = r[i]
                if sym in USED_POINTERS:
                    tpos, st = r[i + 2], r[i + 3]
                    ptrs.append((sym, ("a" if tpos == "s" else tpos, int(r[i + 1])), int(st[:2], 16), int(st[2:], 16)))
        key = (pos, off)
        self.words[key] = words
        self.ss_type[key] = ss_type
        self.ptrs[key] = ptrs

    def ranked_senses(self, lemma):
        """(synset, word number in it) for every sense of `lemma`, most common first: SemCor tag
        count (descending), then sense number, then part of speech (adj, noun, verb, adv)."""
        out = []
        for pos, _ in POS_FILES:
            for rank, syn in enumerate(self.senses.get((lemma, pos), ()), 1):
                cnt = self.tagcount.get((lemma, pos, rank), 0)
                wn = next((k + 1 for k, w in enumerate(self.words[syn]) if w.lower() == lemma), 0)
                out.append(((-cnt, rank, POS_ORDER[pos]), syn, wn))
        out.sort(key=lambda x: x[0])
        return [(syn, wn) for _, syn, wn in out]

    def sense_count(self, lemma, syn):
        """SemCor tag count of `lemma` in synset `syn` (0 when untagged)."""
        ss = self.senses.get((lemma.lower(), syn[0]), ())
        return self.tagcount.get((lemma.lower(), syn[0], ss.index(syn) + 1), 0) if syn in ss else 0

    def direct_antonyms(self, syn, wn):
        """Lexical antonym pointers from word number `wn` of `syn` (wn=0: from any word)."""
        out = []
        for sym, tgt, src, dst in self.ptrs[syn]:
            if sym == "!" and (wn == 0 or src == wn or src == 0):
                words = self.words[tgt]
                out.append((tgt, words[dst - 1] if dst else None))
        return out

    def heads(self, syn):
        """The head synset(s) of an adjective cluster: the synset itself when it is a head,
        the similar-to targets when it is a satellite."""
        if self.ss_type[syn] == "s":
            return [t for sym, t, _, _ in self.ptrs[syn] if sym == "&"]
        return [syn]

    def satellites(self, head):
        return [t for sym, t, _, _ in self.ptrs[head] if sym == "&"]


def wordnet_lexicons(wn):
    """Acceptable antonyms and synonyms for every one-word lemma WordNet knows (lower-cased keys).

    synonyms of w: for every synset S containing w, the other members of S and the members of
    the synsets related to S by similar-to (&: an adjective cluster's head and satellites), also
    see (^) and verb group ($), plus, for a satellite S, the other satellites of its head.
    antonyms of w: for every synset S containing w, the synsets T that any word of S has a
    direct antonym pointer (!) to, and for an adjective also those of S's cluster head(s); then
    T's satellites (when T is a cluster head) and the synsets T points to by also see / verb
    group; all their members."""
    ant, syn = {}, {}

    def related(s, syms):
        return [t for sym, t, _, _ in wn.ptrs[s] if sym in syms]

    def synonym_synsets(s):
        out = [s] + related(s, ("&", "^", "$"))
        if wn.ss_type[s] == "s":
            for h in related(s, ("&",)):
                out += related(h, ("&",))
        return out

    def antonym_synsets(s):
        targets = related(s, ("!",))
        if s[0] == "a":
            for h in wn.heads(s):
                if h != s:
                    targets += related(h, ("!",))
        out = []
        for t in targets:
            out.append(t)
            if t[0] == "a" and wn.ss_type[t] == "a":
                out += wn.satellites(t)
            out += related(t, ("^", "$"))
        return out

    normed = {key: [norm(x) for x in words] for key, words in wn.words.items()}

    def members(synsets):
        if len(synsets) == 1:
            return set(normed[synsets[0]])
        acc = set()
        for g in synsets:
            acc.update(normed[g])
        return acc

    for key, nwords in normed.items():
        keys = [w for w in nwords if " " not in w]  # one-word keys only
        if not keys:
            continue
        syns = members(synonym_synsets(key))
        ants = members(antonym_synsets(key))
        for w in keys:
            if len(syns) > 1:
                syn.setdefault(w, set()).update(syns)
            if ants:
                ant.setdefault(w, set()).update(ants)
    for lex in (ant, syn):
        for w, v in lex.items():
            v.discard(w)
    return ({k: sorted(v) for k, v in ant.items() if v}, {k: sorted(v) for k, v in syn.items() if v})


def levenshtein(a, b):
    if abs(len(a) - len(b)) > 2:
        return 3  # callers only ask whether the distance is at most 2
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def is_variant(a, b):
    """Spelling or morphological variants are not useful synonyms (color/colour, gleam/gleaming,
    cold/coldness): edit distance <= 2, one contains the other, or a shared 5-letter prefix."""
    return (a[:5] == b[:5] or (min(len(a), len(b)) >= 3 and (a in b or b in a))
            or levenshtein(a, b) <= 2)


def wordnet_pairs(wn):
    """One antonym and one synonym per one-word lemma, visited by SemCor frequency until each
    task has MAX_PAIRS.
    antonym: the first direct antonym of the lemma's most common sense that has one;
    synonym: the co-member of the synset where both words are most used (max over the lemma's
    senses and co-members of min(tag count of the lemma's sense, tag count of the co-member's),
    then their sum, then sense order, then synset order), variants skipped."""
    lemmas = sorted({l for (l, _) in wn.senses if ENGLISH_WORD.fullmatch(l)}, key=lambda w: (-wn.freq.get(w, 0), w))
    ant_pairs, syn_pairs = {}, {}
    for lemma in lemmas:
        if len(ant_pairs) >= MAX_PAIRS and len(syn_pairs) >= MAX_PAIRS:
            break
        senses = [(k, s, wnum) for k, (s, wnum) in enumerate(wn.ranked_senses(lemma))
                  if wnum and ENGLISH_WORD.fullmatch(wn.words[s][wnum - 1])]  # skips "American"
        for _, s, wnum in senses if len(ant_pairs) < MAX_PAIRS else ():
            found = [w for _, w in wn.direct_antonyms(s, wnum) if w and ENGLISH_WORD.fullmatch(w) and w != lemma]
            if found:
                ant_pairs[lemma] = found[0]
                break
        best = None
        for k, s, wnum in senses if len(syn_pairs) < MAX_PAIRS else ():
            cl = wn.sense_count(lemma, s)
            for j, w in enumerate(wn.words[s]):
                if w != lemma and ENGLISH_WORD.fullmatch(w) and not is_variant(w, lemma):
                    cw = wn.sense_count(w, s)
                    key = (-min(cl, cw), -(cl + cw), k, j)
                    if best is None or key < best[0]:
                        best = (key, w)
        if best:
            syn_pairs[lemma] = best[1]
    return ant_pairs, syn_pairs


# ------------------------------------------------------------------------------------ FreeDict
def b64(s):
    """A dictd index number (big-endian base64 digits, no padding)."""
    return int.from_bytes(binascii.a2b_base64("A" * (-len(s) % 4) + s), "big")


ANNOT = re.compile(r"<[^>]*>|\[[^\]]*\]|\{[^}]*\}")
NUMBERED = re.compile(r"^\s*\d+\.\s+")
PARENS = re.compile(r"\([^)]*\)")
PLACEHOLDER = re.compile(r"(?:^|(?<=\s))(?:etw|jdm|jdn|jds|jd|sb|sth|qn|qc|qqch|qqn)\.(?=\s|$)")
DOMAIN = re.compile(r"\[[^\]]*\.\]")


def split_translations(line):
    """A FreeDict translation line -> its comma-separated terms, annotations (<pos>, [domain],
    {ref}) removed; a term with (optional) parts or placeholders (etw., jdm., sb., ...) also
    yields its variants without them."""
    if "<" in line or "[" in line or "{" in line:
        line = ANNOT.sub(" ", line)
    if line[:1].isdigit() or line[:1] == " ":
        line = NUMBERED.sub("", line)
    if "(" not in line and "." not in line:  # fast path: plain comma-separated terms
        terms = []
        for t in line.replace(";", ",").split(","):
            t = " ".join(t.split())
            if t and t not in terms:
                terms.append(t)
        return terms
    parts, depth, cur = [], 0, []
    for ch in line:  # split at commas outside parentheses
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        if ch in ",;" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    terms = []
    for t in parts:
        t = " ".join(t.split())
        if not t:
            continue
        variants = [t]
        if "(" in t:
            variants += [" ".join(PARENS.sub(" ", t).split()),
                         " ".join(t.replace("(", " ").replace(")", " ").split())]
        if "." in t:
            variants += [" ".join(PLACEHOLDER.sub(" ", v).split()) for v in variants]
        for v in variants:
            if v and v not in terms:
                terms.append(v)
    return terms


def entry_translation_lines(text):
    """The translation lines of one dictd entry: the lines after the headword line, without
    the English-German dictionary's indented notes, examples, synonyms and see-also lines."""
    out = []
    for ln in text.split("\n")[1:]:
        if not ln or ln.startswith("   "):
            continue
        s = ln.strip()
        if s and not s.startswith(("see:", "Note:", "Synonym:", "Synonyms:", '"')):
            out.append(s)
    return out


def freedict_task(name, freq):
    """(pairs, lexicon) of one FreeDict pair. The lexicon maps every one-word headword to all
    its translations (all entries, all senses); pairs are made for headwords that are plain
    English words, visited by SemCor frequency until MAX_PAIRS are found."""
    with gzip.open(os.path.join(DICTD_DIR, name + ".dict.dz")) as f:
        blob = f.read()
    index = {}  # headword (dictd keys are lower-case) -> [(offset, length), ...] in index order
    with open(os.path.join(DICTD_DIR, name + ".index"), encoding="utf-8") as f:
        rows = f.read().split("\n")
    for row in rows:
        head, _, rest = row.partition("\t")
        head = head.strip()  # a few keys carry a trailing space
        # one-word headwords only: the lexicon is keyed by word-level inputs (the English-German
        # dictionary also has ~260k multi-word phrases, which would triple the build time)
        if not rest or " " in head or head.startswith("00database") or head.startswith("00-database"):
            continue
        off, _, ln = rest.partition("\t")
        ln = ln.partition("\t")[0]
        loc = (b64(off), b64(ln))
        if head in index:
            index[head].append(loc)
        else:
            index[head] = [loc]

    lex = {}
    stops = (b"   ", b" see:", b"\n")
    for head, locs in index.items():
        acc = set()
        for off, ln in locs:
            # translation lines: after the headword line, up to the first note/example/blank line
            end = off + ln
            i = blob.index(b"\n", off, end) + 1
            while i < end and not blob.startswith(stops, i):
                j = blob.find(b"\n", i, end)
                j = end if j < 0 else j
                acc.update(split_translations(blob[i:j].decode("utf-8")))
                i = j + 1
        get = _NORM.get
        acc = {get(t) or norm(t) for t in acc}
        acc.discard("")
        if acc:
            key = norm(head)
            acc.discard(key)
            if key in lex:
                lex[key].update(acc)
            elif acc:
                lex[key] = acc
    lex = {k: sorted(v) for k, v in lex.items()}

    pairs = {}
    for head in sorted((h for h in index if ENGLISH_WORD.fullmatch(h)), key=lambda w: (-freq.get(w, 0), w)):
        if len(pairs) >= MAX_PAIRS:
            break
        # Most common sense: the entry with the most usage examples, then the most see-also
        # references, then one without a domain label ([techn.], [fin.], ...), then index order;
        # its first one-word translation wins.
        entries = []
        for i, (off, ln) in enumerate(index[head]):
            text = blob[off:off + ln].decode("utf-8")
            lines = entry_translation_lines(text)
            meta = [l.lstrip() for l in text.split("\n")]
            examples = sum(1 for l in meta if l.startswith('"'))
            see = sum(l.count("{") for l in meta if l.startswith("see:"))
            domain = any(DOMAIN.search(l) for l in lines)
            entries.append((-examples, -see, domain, i, lines))
        entries.sort(key=lambda e: e[:4])
        for *_, lines in entries:
            one = [t for l in lines for t in split_translations(l)
                   if FOREIGN_WORD.fullmatch(t) and t.lower() != head]
            if one:
                pairs[head] = unicodedata.normalize("NFC", one[0])
                break
    return pairs, lex


# ------------------------------------------------------------------------------------- output
def rank_inputs(pairs, freq):
    """Keep at most MAX_PAIRS inputs, the most frequent in SemCor (WordNet cntlist.rev) first,
    ties alphabetical; the file lists the kept pairs alphabetically by input."""
    ranked = sorted(pairs, key=lambda w: (-freq.get(w, 0), w))[:MAX_PAIRS]
    return [{"input": w, "output": pairs[w]} for w in sorted(ranked)]


def dump_pairs(items):
    """Function-vector JSON, one pair per line."""
    lines = [json.dumps(p, ensure_ascii=False) for p in items]
    return ("[\n" + ",\n".join(lines) + "\n]\n").encode("utf-8")


def dump(obj):
    """Compact JSON with sorted keys (lexicons are large; the C encoder needs no indent)."""
    return (json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def dump_manifest(obj):
    return (json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=1) + "\n").encode("utf-8")


def write_if_changed(path, data):
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return
    except FileNotFoundError:
        pass
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def package_versions(names):
    out = {n: "unknown" for n in names}
    try:
        with open(DPKG_STATUS, encoding="utf-8", errors="replace") as f:
            stanzas = f.read().split("\n\n")
    except OSError:
        return out
    for st in stanzas:
        fields = dict(l.split(": ", 1) for l in st.split("\n") if ": " in l and not l.startswith(" "))
        if fields.get("Package") in out and "installed" in fields.get("Status", ""):
            out[fields["Package"]] = fields.get("Version", "unknown")
    return out


def sha256(data):
    return hashlib.sha256(data).hexdigest()


SOURCES = {
    "antonym": "wordnet-base",
    "synonym": "wordnet-base",
    "english-french": "dict-freedict-eng-fra",
    "english-german": "dict-freedict-eng-deu",
}


def up_to_date(out, fingerprint):
    try:
        with open(os.path.join(out, "tasks", "MANIFEST.json"), encoding="utf-8") as f:
            man = json.load(f)
        if man.get("fingerprint") != fingerprint:
            return False
        for name, t in man["tasks"].items():
            for kind, key in (("tasks", "sha256"), ("lexicon", "lexicon_sha256")):
                with open(os.path.join(out, kind, name + ".json"), "rb") as f:
                    if sha256(f.read()) != t[key]:
                        return False
        return set(man["tasks"]) == set(TASK_NAMES)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build_source(job, out, versions):
    """Builds the tasks of one source and writes their files; returns their manifest entries."""
    if job == "wordnet":
        wn = WordNet(WORDNET_DIR)
        freq = wn.freq
        ant_lex, syn_lex = wordnet_lexicons(wn)
        ant_pairs, syn_pairs = wordnet_pairs(wn)
        built = {"antonym": (ant_pairs, ant_lex), "synonym": (syn_pairs, syn_lex)}
    else:
        freq = semcor_counts(WORDNET_DIR)[1]
        name = {"freedict-eng-fra": "english-french", "freedict-eng-deu": "english-german"}[job]
        built = {name: freedict_task(job, freq)}
    entries = {}
    for name, (pairs, lex) in built.items():
        items = rank_inputs(pairs, freq)
        tdata, ldata = dump_pairs(items), dump(lex)
        write_if_changed(os.path.join(out, "tasks", name + ".json"), tdata)
        write_if_changed(os.path.join(out, "lexicon", name + ".json"), ldata)
        pkg = SOURCES[name]
        entries[name] = {
            "pairs": len(items), "lexicon_entries": len(lex),
            "source_package": pkg, "source_version": versions[pkg],
            "sha256": sha256(tdata), "lexicon_sha256": sha256(ldata),
        }
    return entries


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data", help="data directory (writes OUT/tasks, OUT/lexicon)")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args()

    versions = package_versions(sorted(set(SOURCES.values())))
    with open(os.path.abspath(__file__), "rb") as f:
        script_sha = sha256(f.read())
    fingerprint = sha256(json.dumps([script_sha, versions], sort_keys=True).encode())
    if not args.force and up_to_date(args.out, fingerprint):
        print("build_tasks: up to date (%s)" % os.path.join(args.out, "tasks"))
        return 0

    missing = [p for p in [os.path.join(WORDNET_DIR, "data.noun")] +
               [os.path.join(DICTD_DIR, n + ".index") for n in ("freedict-eng-fra", "freedict-eng-deu")]
               if not os.path.exists(p)]
    if missing:
        print("build_tasks: missing source files (install wordnet-base dict-freedict-eng-fra "
              "dict-freedict-eng-deu): " + ", ".join(missing), file=sys.stderr)
        return 1

    os.makedirs(os.path.join(args.out, "tasks"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "lexicon"), exist_ok=True)
    jobs = ["wordnet", "freedict-eng-deu", "freedict-eng-fra"]
    try:  # the three sources are independent: build them in parallel where fork is available
        import multiprocessing
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
            results = pool.starmap(build_source, [(j, args.out, versions) for j in jobs])
    except (ImportError, ValueError, OSError):
        results = [build_source(j, args.out, versions) for j in jobs]
    entries = {}
    for r in results:
        entries.update(r)
    manifest = {"fingerprint": fingerprint, "generator": "cluster/build_tasks.py",
                "tasks": {name: entries[name] for name in TASK_NAMES}}
    for name in TASK_NAMES:
        print("build_tasks: %-15s %5d pairs, lexicon %d entries"
              % (name, entries[name]["pairs"], entries[name]["lexicon_entries"]))
    write_if_changed(os.path.join(args.out, "tasks", "MANIFEST.json"), dump_manifest(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
