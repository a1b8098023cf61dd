//! Fluentd tag patterns, the `match` of a sink.
//!
//! Semantics follow Fluentd's `<match>` directive ("Config File Syntax: how match patterns
//! work", and `Fluent::GlobMatchPattern` in fluentd's `lib/fluent/match.rb`, which is the
//! reference we mirror where the docs are silent):
//!
//! - `*` matches one tag part: `a.*` matches `a.b` but neither `a` nor `a.b.c`. Like
//!   Fluentd it is `[^.]*`, so it can also sit inside a part (`app*.log`).
//! - `**` matches zero or more parts: `a.**` matches `a`, `a.b` and `a.b.c` (not `ab`);
//!   `**.b` matches `b` and `x.y.b`.
//! - `{x,y}` matches any alternative; alternatives may contain dots, `*` and `**`
//!   (`a.{b,c.**}`).
//! - Several patterns separated by whitespace match if any of them does (`a.** b.*`).
//! - `\` makes the next character literal; every other character matches itself.
//!
//! Deliberate differences from Fluentd, all rejected at parse time instead of being read
//! in a surprising way: an unbalanced `{`/`}` (Fluentd silently closes or keeps it), a `,`
//! outside braces (most likely meant as a list, which is written with spaces), an empty
//! pattern, and `/regex/` patterns (not supported).
//!
//! A pattern is compiled once into a small Thompson NFA over the tag's bytes; `matches`
//! simulates it with bit sets on the stack, so it costs O(tag length × states / 64) and
//! never allocates for patterns of up to [`INLINE_STATES`] states (any realistic one).

use std::fmt;

/// Patterns with at most this many NFA states are matched without allocating.
pub const INLINE_STATES: usize = 512;
const INLINE_WORDS: usize = INLINE_STATES / 64;

/// A compiled Fluentd tag pattern (one or more whitespace-separated alternatives).
#[derive(Clone)]
pub struct TagPattern {
    source: String,
    /// One automaton per whitespace-separated pattern; the tag matches if any accepts it.
    alternatives: Vec<Nfa>,
    /// One of the patterns is `**`: every tag matches (Fluentd's `AllMatchPattern`). The
    /// default sink pattern, so worth skipping the automaton for.
    all: bool,
}

impl PartialEq for TagPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for TagPattern {}

impl fmt::Debug for TagPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TagPattern").field(&self.source).finish()
    }
}

impl fmt::Display for TagPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for TagPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TagPattern::parse(s)
    }
}

impl TagPattern {
    /// Compile a pattern. The error names the problem and where it is, e.g.
    /// `unbalanced brace: "{" at offset 2 is never closed`.
    pub fn parse(s: &str) -> Result<TagPattern, String> {
        let mut alternatives = Vec::new();
        let mut all = false;
        for word in s.split_whitespace() {
            all |= word == "**";
            // split_whitespace gives sub-slices of `s`, so the pointer difference is the
            // word's offset; reported offsets are then relative to the whole string.
            let offset = word.as_ptr() as usize - s.as_ptr() as usize;
            alternatives.push(compile(word, offset)?);
        }
        if alternatives.is_empty() {
            return Err("empty pattern (use \"**\" to match every tag)".to_string());
        }
        Ok(TagPattern { source: s.to_string(), alternatives, all })
    }

    /// The pattern that matches every tag (`**`).
    pub fn match_all() -> TagPattern {
        let mut nfa = Nfa { states: Vec::new(), start: 0 };
        let accept = nfa.push(State::Match);
        nfa.start = nfa.any_star(accept);
        TagPattern { source: "**".to_string(), alternatives: vec![nfa], all: true }
    }

    /// Whether `tag` matches. Called per batch: no allocation for realistic patterns.
    pub fn matches(&self, tag: &str) -> bool {
        self.all || self.alternatives.iter().any(|nfa| nfa.matches(tag.as_bytes()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

// ---------------------------------------------------------------------------------------
// Parsing: the pattern text to a small syntax tree, following GlobMatchPattern's rules.

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Byte(u8),
    /// `*`: `[^.]*`
    NonDotStar,
    /// `**` not followed by a dot: `.*`
    AnyStar,
    /// `**.`: `(?:.*\.|\A)`, i.e. "any number of whole parts, then the rest".
    PartsPrefix,
    /// A `.` directly before `**`: `(?![^.])`, "the previous part ends here", so that
    /// `a.**` matches `a` itself but not `ab`.
    PartEnd,
    Alt(Vec<Vec<Node>>),
}

fn compile(word: &str, base: usize) -> Result<Nfa, String> {
    if word.starts_with('/') {
        return Err(format!(
            "regular expression patterns are not supported: {word:?} (use *, ** and {{a,b}})"
        ));
    }
    let nodes = parse_word(word, base)?;
    let mut nfa = Nfa { states: Vec::new(), start: 0 };
    let accept = nfa.push(State::Match);
    nfa.start = nfa.seq(&nodes, accept);
    Ok(nfa)
}

fn parse_word(word: &str, base: usize) -> Result<Vec<Node>, String> {
    let b = word.as_bytes();
    // Stack of open braces: (offset of "{", finished alternatives); `cur` is the sequence
    // being built at the innermost level.
    let mut stack: Vec<(usize, Vec<Vec<Node>>, Vec<Node>)> = Vec::new();
    let mut cur: Vec<Node> = Vec::new();
    let mut dot = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'*' && b.get(i + 1) == Some(&b'*') {
            if dot {
                cur.push(Node::PartEnd);
                dot = false;
            }
            if b.get(i + 2) == Some(&b'.') {
                cur.push(Node::PartsPrefix);
                i += 3;
            } else {
                cur.push(Node::AnyStar);
                i += 2;
            }
            continue;
        }
        if dot {
            cur.push(Node::Byte(b'.'));
            dot = false;
        }
        match c {
            b'\\' => match b.get(i + 1) {
                Some(&n) => {
                    cur.push(Node::Byte(n));
                    i += 1;
                }
                None => {
                    return Err(format!("dangling \"\\\" at offset {} (escape what?)", base + i))
                }
            },
            b'.' => dot = true,
            b'*' => cur.push(Node::NonDotStar),
            b'{' => {
                stack.push((base + i, Vec::new(), std::mem::take(&mut cur)));
            }
            b',' => match stack.last_mut() {
                Some((_, alts, _)) => alts.push(std::mem::take(&mut cur)),
                None => {
                    return Err(format!(
                        "\",\" at offset {} outside braces: write alternatives as \"{{a,b}}\" \
                         and separate several patterns with spaces",
                        base + i
                    ))
                }
            },
            b'}' => match stack.pop() {
                Some((_, mut alts, outer)) => {
                    alts.push(std::mem::take(&mut cur));
                    cur = outer;
                    cur.push(Node::Alt(alts));
                }
                None => {
                    return Err(format!(
                        "unbalanced brace: \"}}\" at offset {} has no matching \"{{\"",
                        base + i
                    ))
                }
            },
            _ => cur.push(Node::Byte(c)),
        }
        i += 1;
    }
    if let Some((at, _, _)) = stack.last() {
        return Err(format!("unbalanced brace: \"{{\" at offset {at} is never closed"));
    }
    if dot {
        // Fluentd drops a trailing dot; keeping it literal means `a.` matches only "a.".
        cur.push(Node::Byte(b'.'));
    }
    Ok(cur)
}

// ---------------------------------------------------------------------------------------
// The automaton.

type StateId = u32;

#[derive(Debug, Clone, Copy)]
enum State {
    Byte(u8, StateId),
    NonDot(StateId),
    AnyByte(StateId),
    Split(StateId, StateId),
    /// Epsilon if at the start of the tag.
    AssertStart(StateId),
    /// Epsilon if at the end of the tag or before a `.`.
    AssertPartEnd(StateId),
    Match,
}

#[derive(Debug, Clone)]
struct Nfa {
    states: Vec<State>,
    start: StateId,
}

impl Nfa {
    fn push(&mut self, s: State) -> StateId {
        self.states.push(s);
        (self.states.len() - 1) as StateId
    }

    /// Compile `nodes` so that they continue to `next`; returns the entry state.
    fn seq(&mut self, nodes: &[Node], next: StateId) -> StateId {
        nodes.iter().rev().fold(next, |next, node| self.node(node, next))
    }

    fn node(&mut self, node: &Node, next: StateId) -> StateId {
        match node {
            Node::Byte(c) => self.push(State::Byte(*c, next)),
            Node::NonDotStar => {
                let split = self.push(State::Split(next, next));
                let body = self.push(State::NonDot(split));
                self.states[split as usize] = State::Split(body, next);
                split
            }
            Node::AnyStar => self.any_star(next),
            Node::PartEnd => self.push(State::AssertPartEnd(next)),
            Node::PartsPrefix => {
                let dot = self.push(State::Byte(b'.', next));
                let any = self.any_star(dot);
                let start = self.push(State::AssertStart(next));
                self.push(State::Split(any, start))
            }
            Node::Alt(branches) => {
                let starts: Vec<StateId> = branches.iter().map(|b| self.seq(b, next)).collect();
                let mut iter = starts.into_iter().rev();
                let last = iter.next().unwrap_or(next);
                iter.fold(last, |rest, s| self.push(State::Split(s, rest)))
            }
        }
    }

    fn any_star(&mut self, next: StateId) -> StateId {
        let split = self.push(State::Split(next, next));
        let body = self.push(State::AnyByte(split));
        self.states[split as usize] = State::Split(body, next);
        split
    }

    fn matches(&self, tag: &[u8]) -> bool {
        let words = self.states.len().div_ceil(64);
        if words <= INLINE_WORDS {
            let mut a = [0u64; INLINE_WORDS];
            let mut b = [0u64; INLINE_WORDS];
            self.run(tag, &mut a[..words], &mut b[..words])
        } else {
            // Only for pathological patterns (thousands of characters).
            let mut a = vec![0u64; words];
            let mut b = vec![0u64; words];
            self.run(tag, &mut a, &mut b)
        }
    }

    fn run<'a>(&self, tag: &[u8], mut cur: &'a mut [u64], mut next: &'a mut [u64]) -> bool {
        self.add(cur, self.start, tag, 0);
        for (pos, &c) in tag.iter().enumerate() {
            next.fill(0);
            let mut any = false;
            for (w, &bits) in cur.iter().enumerate() {
                let mut bits = bits;
                while bits != 0 {
                    let id = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let to = match self.states[id] {
                        State::Byte(b, to) if b == c => to,
                        State::NonDot(to) if c != b'.' => to,
                        State::AnyByte(to) => to,
                        _ => continue,
                    };
                    self.add(next, to, tag, pos + 1);
                    any = true;
                }
            }
            if !any {
                return false;
            }
            std::mem::swap(&mut cur, &mut next);
        }
        cur.iter().enumerate().any(|(w, &bits)| {
            let mut bits = bits;
            while bits != 0 {
                let id = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if matches!(self.states[id], State::Match) {
                    return true;
                }
            }
            false
        })
    }

    /// Add `id` and its epsilon closure at position `pos` to `set`.
    fn add(&self, set: &mut [u64], id: StateId, tag: &[u8], pos: usize) {
        let i = id as usize;
        let (w, bit) = (i / 64, 1u64 << (i % 64));
        if set[w] & bit != 0 {
            return;
        }
        set[w] |= bit;
        match self.states[i] {
            State::Split(a, b) => {
                self.add(set, a, tag, pos);
                self.add(set, b, tag, pos);
            }
            State::AssertStart(to) if pos == 0 => self.add(set, to, tag, pos),
            State::AssertPartEnd(to) if pos == tag.len() || tag[pos] == b'.' => {
                self.add(set, to, tag, pos)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, yes: &[&str], no: &[&str]) {
        let p = TagPattern::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
        for t in yes {
            assert!(p.matches(t), "{pattern:?} should match {t:?}");
        }
        for t in no {
            assert!(!p.matches(t), "{pattern:?} should not match {t:?}");
        }
    }

    // The examples of Fluentd's "Config File Syntax" page, section "How do the match
    // patterns work?".
    #[test]
    fn fluentd_documented_examples() {
        check("a.*", &["a.b"], &["a", "a.b.c"]);
        check("a.**", &["a", "a.b", "a.b.c"], &["ab", "b.a"]);
        check("{a,b}", &["a", "b"], &["c", "ab"]);
        check("a.{b,c}.*", &["a.b.x", "a.c.y"], &["a.b", "a.d.x", "a.b.x.y"]);
        check("a.{b,c.**}", &["a.b", "a.c", "a.c.d", "a.c.d.e"], &["a.b.c", "a.d", "a"]);
        check("a b", &["a", "b"], &["c", "a.b"]);
        check("a.** b.*", &["a", "a.b", "a.b.c", "b.d"], &["b", "b.d.e", "c"]);
    }

    // The cases of fluentd's own test/test_match.rb (GlobMatchPattern and EventRouter::Rule).
    #[test]
    fn fluentd_test_suite_cases() {
        check("a", &["a"], &["b"]);
        check("a.b", &["a.b"], &["aab"]);
        check("a*", &["a", "ab", "abc"], &["a.b", "ab.c", "ba"]);
        check("*a", &["a", "ba", "cba"], &["ab"]);
        check("*a*", &["a", "ba", "ac", "bac"], &[]);
        check("a.*", &["a.b", "a.c"], &["ab"]);
        check("a.*.c", &["a.b.c", "a.c.c"], &["a.c"]);
        check("a.**", &["a", "a.b"], &["ab", "abc", "ab.c", "ab.d.e"]);
        check("a**", &["a", "ab", "abc", "a.b", "ab.c", "ab.d.e"], &[]);
        check("**.a", &["a", "b.a", "cb.a", "d.e.a"], &["ba", "c.ba"]);
        check("**a", &["a", "ba", "c.ba", "b.a", "cb.a", "d.e.a"], &[]);
        check("a.{b,c}", &["a.b", "a.c"], &["a.d"]);
        check("a.{b,c}.**", &["a.b", "a.c"], &["a.d", "a.cd"]);
        check("a.{b.**,c}", &["a.b", "a.b.c", "a.c"], &["a.c.d"]);
        check("a.b a.c", &["a.b", "a.c"], &["a.d"]);
        check("a.b.** a.c.**", &["a.b", "a.c"], &["a.d", "a.cd"]);
        check("a.b.** a.c", &["a.b", "a.b.c", "a.c"], &["a.c.d"]);
    }

    #[test]
    fn literals_and_single_part_wildcards() {
        check("app.web", &["app.web"], &["app", "app.web.1", "app.we", "xapp.web"]);
        check("*", &["a", "docker"], &["a.b"]);
        check("*.*", &["a.b"], &["a", "a.b.c"]);
        check("app*.log", &["app.log", "apple.log"], &["app.x.log", "ap.log"]);
        check("docker.*.stdout", &["docker.web.stdout"], &["docker.stdout", "docker.a.b.stdout"]);
    }

    #[test]
    fn double_star_anywhere() {
        check("**", &["", "a", "a.b.c"], &[]);
        check("**.b", &["b", "a.b", "x.y.b"], &["ab", "b.c"]);
        check("a.**.z", &["a.z", "a.b.z", "a.b.c.z"], &["az", "a.b", "z"]);
        check("a.**.b.*", &["a.b.c", "a.x.b.c"], &["a.b", "a.b.c.d"]);
    }

    #[test]
    fn nested_alternatives_and_escapes() {
        check("{a,b.{c,d}}.e", &["a.e", "b.c.e", "b.d.e"], &["b.e", "a.c.e"]);
        check("{app,sys}.**", &["app", "sys.kernel", "app.a.b"], &["other"]);
        check("{a,}b", &["ab", "b"], &["a"]);
        check(r"a\*b", &["a*b"], &["axb"]);
        check(r"a\.b", &["a.b"], &["axb"]);
        check("a-b_c.d", &["a-b_c.d"], &["a-b_c"]);
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let err = |p: &str| TagPattern::parse(p).unwrap_err();
        assert_eq!(err("a.{b,c"), "unbalanced brace: \"{\" at offset 2 is never closed");
        assert_eq!(err("a.b}"), "unbalanced brace: \"}\" at offset 3 has no matching \"{\"");
        assert_eq!(err("x a}"), "unbalanced brace: \"}\" at offset 3 has no matching \"{\"");
        assert!(err("").starts_with("empty pattern"));
        assert!(err("   ").starts_with("empty pattern"));
        assert!(err("a.**,b.**").contains("outside braces"));
        assert!(err("/^a$/").contains("regular expression"));
        assert!(err("a\\").contains("dangling"));
    }

    #[test]
    fn equality_display_and_match_all() {
        let p = TagPattern::parse("a.** b.*").unwrap();
        assert_eq!(p.to_string(), "a.** b.*");
        assert_eq!(p.as_str(), "a.** b.*");
        assert_eq!(p, TagPattern::parse("a.** b.*").unwrap());
        assert!(TagPattern::parse("x.y **").unwrap().matches("anything.at.all"));
        let all = TagPattern::match_all();
        assert_eq!(all, TagPattern::parse("**").unwrap());
        assert!(all.matches("") && all.matches("x.y.z"));
    }

    #[test]
    fn huge_patterns_still_match() {
        let alts: Vec<String> = (0..400).map(|i| format!("app{i}")).collect();
        let p = TagPattern::parse(&format!("{{{}}}.**", alts.join(","))).unwrap();
        assert!(p.alternatives[0].states.len() > INLINE_STATES);
        assert!(p.matches("app399.web"));
        assert!(!p.matches("app400.web"));
    }
}
