"""Lark front end: .ppl text -> AST with a span on every node (after miniwdl's _parser).

The LALR parser is built once per process and cached. Lark exceptions never escape:
they are turned into :class:`~csis_dsl.errors.CompileError` diagnostics.
"""
from __future__ import annotations

import functools
import threading
from importlib import resources
import re
from pathlib import Path

import lark
from lark import Lark, Token, Transformer

from ..errors import CompileError, Diagnostic, Span
from . import ast as A

_TOKEN_WORDS = {
    "SEMICOLON": "';'", "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'",
    "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "TILDE": "'~'", "EQUAL": "'='",
    "NAME": "a name", "NUMBER": "a number", "QMARK": "'?'", "COLON": "':'",
    "MORETHAN": "'>'", "LESSTHAN": "'<'", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'",
    "SLASH": "'/'", "CIRCUMFLEX": "'^'", "__ANON_0": "'=='", "$END": "end of file",
}


def _grammar_text() -> str:
    try:  # installed: the grammar ships as package data in csis_dsl.grammars
        return resources.files("csis_dsl.grammars").joinpath("ppl.lark").read_text()
    except (ModuleNotFoundError, FileNotFoundError):  # source checkout
        return (Path(__file__).resolve().parents[2] / "grammars" / "ppl.lark").read_text()


_KEPT_TOKENS = {"NAME", "NUMBER"}


class _Part(tuple):
    """An intermediate parse result (a block, a clause, bounds) that knows its span."""
    span: Span


def _part(span, items) -> _Part:
    p = _Part(items)
    p.span = span
    return p


def _edge(x, first: bool):
    """(line, col) where a child starts (first) or ends; None for placeholders."""
    if x is None:
        return None
    if isinstance(x, Token):
        return (x.line, x.column) if first else (x.end_line, x.end_column)
    s = getattr(x, "_outer", None) or getattr(x, "span", None)
    if s is None:
        return None
    return (s.line, s.col) if first else (s.end_line, s.end_col)


def _exprs(ch):
    """The expressions among a rule's children: punctuation and placeholders dropped."""
    return [c for c in ch if c is not None and not isinstance(c, Token)]


class _ToAst(Transformer):
    """Builds the AST while the LALR parser reduces (no parse tree in between).

    All tokens are kept (``keep_all_tokens``) so that every node's span runs from its
    first token to its last, keywords and brackets included, as a user reads it.
    """
    file = "<string>"

    def _span(self, ch) -> Span:
        for c in ch:
            start = _edge(c, True)
            if start is not None:
                break
        for c in reversed(ch):
            end = _edge(c, False)
            if end is not None:
                break
        return Span(self.file, start[0], start[1], end[0], end[1])

    def _tspan(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column)

    # program ---------------------------------------------------------------
    def start(self, ch):            # "model" NAME "{" stmt* "}"
        name = ch[1]
        return (str(name), self._tspan(name), list(ch[3:-1]))

    def arg_decl(self, ch):         # "arg" type NAME ["=" expr] ";"
        return A.ArgDecl(self._span(ch), ch[1], str(ch[2]), self._tspan(ch[2]), ch[4])

    def sample_stmt(self, ch):      # [type] expr "~" dist ";"
        return A.Sample(self._span(ch), ch[0], ch[1], ch[3], observed=False)

    def observe_stmt(self, ch):     # "observe" [type] expr "~" dist ";"
        return A.Sample(self._span(ch), ch[1], ch[2], ch[4], observed=True)

    def observe_assign(self, ch):   # "observe" [type] expr "=" expr ";"
        return A.Assign(self._span(ch), ch[1], ch[2], ch[4], observed=True)

    def assign_stmt(self, ch):      # [type] expr "=" expr ";"
        return A.Assign(self._span(ch), ch[0], ch[1], ch[3])

    def dist(self, ch):             # call [truncation]
        trunc = None if ch[1] is None else tuple(ch[1])
        return A.Dist(self._span(ch), ch[0], trunc)

    def truncation(self, ch):       # "T" "[" opt_expr "," opt_expr "]"
        return _part(self._span(ch), (ch[2], ch[4]))

    def opt_expr(self, ch):
        return ch[0]

    def for_stmt(self, ch):         # "for" NAME "in" "range" "(" expr ["," expr] ")" block
        var, a, b, body = ch[1], ch[5], ch[7], ch[9]
        start, stop = (None, a) if b is None else (a, b)
        return A.For(self._span(ch), str(var), self._tspan(var), start, stop, list(body))

    def if_stmt(self, ch):          # "if" "(" expr ")" block elif_clause* [else_clause]
        branches = [(ch[2], list(ch[4]))]
        orelse = None
        for r in ch[5:]:
            if r is None:
                continue
            if r[0] == "elif":
                branches.append((r[1], list(r[2])))
            else:
                orelse = list(r[1])
        return A.If(self._span(ch), branches, orelse)

    def elif_clause(self, ch):      # "else" "if" "(" expr ")" block
        return _part(self._span(ch), ("elif", ch[3], ch[5]))

    def else_clause(self, ch):      # "else" block
        return _part(self._span(ch), ("else", ch[1]))

    def block(self, ch):            # "{" stmt* "}"
        return _part(self._span(ch), ch[1:-1])

    # types -----------------------------------------------------------------
    def type(self, ch):             # base_type [bounds] [dims]
        base, bounds, dims = ch
        t = A.TypeSpec(self._span(ch), str(base), dims=list(dims or []))
        for kind, value in bounds or []:
            setattr(t, kind, value)
        return t

    def bounds(self, ch):           # "<" bound ("," bound)* ">"
        return _part(self._span(ch), [c for c in ch if isinstance(c, _Part)])

    def bound(self, ch):            # bound_kind "=" signed_atom
        return _part(self._span(ch), (str(ch[0]), ch[2]))

    def dims(self, ch):             # "[" expr ("," expr)* "]"
        return _part(self._span(ch), _exprs(ch))

    def _keyword(self, ch):         # the `!` rules: the token itself, position kept
        return ch[0]

    base_type = bound_kind = comp_op = add_op = mul_op = pow_op = _keyword

    # expressions -------------------------------------------------------------
    def number(self, ch):
        text = str(ch[0])
        is_int = not any(c in text for c in ".eE")
        return A.Num(self._span(ch), float(text), is_int)

    def true(self, ch):
        return A.Bool(self._span(ch), True)

    def false(self, ch):
        return A.Bool(self._span(ch), False)

    def name(self, ch):
        return A.Name(self._span(ch), str(ch[0]))

    def call(self, ch):             # NAME "(" [call_arg ("," call_arg)*] ")"
        return A.Call(self._span(ch), str(ch[0]), self._tspan(ch[0]), _exprs(ch[1:]))

    def whole(self, ch):            # ":" as an index
        return A.Whole(self._span(ch))

    def keyword(self, ch):          # NAME "=" expr, among a call's arguments
        return A.Keyword(self._span(ch), str(ch[0]), self._tspan(ch[0]), ch[-1])

    def vector(self, ch):           # "[" [expr ("," expr)*] "]"
        return A.Vector(self._span(ch), _exprs(ch))

    def index(self, ch):            # postfix "[" expr ("," expr)* "]"
        return A.Index(self._span(ch), ch[0], _exprs(ch[1:]))

    def _enclosed(self, ch):        # "(" expr ")" and "+" unary: the inner expression,
        inner = ch[-2] if len(ch) == 3 else ch[-1]   # whose container is the whole
        inner._outer = self._span(ch)
        return inner

    atom = unary = _enclosed

    def neg(self, ch):              # "-" operand
        operand = ch[1]
        if isinstance(operand, A.Num):   # fold literals: -1.5 is a number
            return A.Num(self._span(ch), -operand.value, operand.is_int)
        return A.Unary(self._span(ch), "-", operand)

    def not_(self, ch):
        return A.Unary(self._span(ch), "not", ch[1])

    def binop(self, ch):            # left op right (op from add_op/mul_op/pow_op)
        return A.Binary(self._span(ch), str(ch[1]), ch[0], ch[2])

    compare = binop

    def and_(self, ch):
        return A.Binary(self._span(ch), "and", ch[0], ch[2])

    def or_(self, ch):
        return A.Binary(self._span(ch), "or", ch[0], ch[2])

    def cond(self, ch):             # c "?" a ":" b
        return A.Cond(self._span(ch), ch[0], ch[2], ch[4])


_PARSE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def lark_parser() -> Lark:
    """The LALR parser with the AST builder inlined: one pass, no parse tree."""
    return Lark(_grammar_text(), parser="lalr", lexer="contextual",
                keep_all_tokens=True, maybe_placeholders=True, transformer=_ToAst())


def _expected_words(expected) -> str:
    words = sorted({_TOKEN_WORDS.get(e, repr(e.lower()) if e.isupper() else e)
                    for e in expected if not e.startswith("__ANON")},
                   key=lambda w: (w not in ("';'", "'}'"), w))   # the likely ones first
    if len(words) > 6:
        words = words[:6] + ["..."]
    return ", ".join(words)


TYPES = ("real", "int", "bool", "simplex", "ordered", "positive_ordered",
         "cholesky_factor_corr")
TYPE_WORDS = ("real, int, bool, simplex[K], ordered[K], positive_ordered[K] and "
              "cholesky_factor_corr[K]")
_NOT_YET = {
    "cholesky_factor_cov": "use a MultivariateNormal with a covariance matrix you build",
    "corr_matrix": "build the correlation matrix from latents you declare",
    "cov_matrix": "build the covariance matrix from latents you declare",
    "unit_vector": "normalise a real[K] vector yourself",
}
_SHAPED = {"vector": "real[K]", "row_vector": "real[K]", "matrix": "real[N, K]",
           "array": "real[N]", "float": "real", "double": "real", "integer": "int",
           "boolean": "bool"}
_STMT_HEAD = re.compile(r"(?:^|[;{}])\s*(?:observe\s+|arg\s+)?([A-Za-z_]\w*)\s*"
                        r"(?:<[^<>;{}]*>)?\s*(?:\[[^\[\];{}]*\])?\s*$")


_BARE_DECL = re.compile(r"(?:^|[;{}])\s*(?:real|int|bool|simplex|ordered|positive_ordered|"
                        r"cholesky_factor_corr)\s*(?:<[^<>;{}]*>)?\s*"
                        r"(?:\[[^\[\];{}]*\])?\s*([A-Za-z_]\w*)\s*$")


def _declaration_only(err, tok):
    """``real mu;``: a Stan-style declaration with nothing to define it."""
    text = getattr(err, "_text", None)
    if text is None or tok.start_pos is None:
        return None
    m = _BARE_DECL.search(text[:tok.start_pos])
    return m.group(1) if m else None


def _unknown_type(err, tok):
    """A statement that begins ``word[...] name`` or ``word name``: ``word`` stands where
    a type would, so it is an unknown type, not a missing ';'. (word, its column)."""
    text = getattr(err, "_text", None)
    if text is None or tok.start_pos is None:
        return None
    m = _STMT_HEAD.search(text[:tok.start_pos])
    if m is None or m.group(1) in TYPES or m.group(1) in ("model", "observe", "arg"):
        return None
    line_start = text.rfind("\n", 0, m.start(1)) + 1
    return m.group(1), m.start(1) - line_start + 1


def _type_message(word: str) -> str:
    from .scopes import close_match
    if word in _NOT_YET:
        return (f"the type '{word}' is not supported yet (the types are {TYPE_WORDS}, "
                f"with bounds and sizes); for now, {_NOT_YET[word]}")
    if word in _SHAPED:
        return (f"'{word}' is not a type of this language; write {_SHAPED[word]} "
                "(sizes after the type: real[K] is a vector, real[N, K] a matrix)")
    hint = close_match(word, list(TYPES) + list(_NOT_YET))
    return (f"unknown type '{word}'{hint or ''}{'' if hint else ';'} the types are "
            f"{TYPE_WORDS}, with optional bounds and sizes (real<lower=0>[K])")


def _syntax_diagnostic(err: lark.exceptions.LarkError, file: str) -> Diagnostic:
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        span = Span(file, err.line, err.column, err.line, err.column + 1)
        ch = err.char
        hint = ""
        if ch in "\"'":
            hint = "; strings are not part of the language"
        elif ch == ".":
            hint = "; attribute access is not part of the language"
        return Diagnostic(span, f"unexpected character {ch!r}{hint}")
    if isinstance(err, lark.exceptions.UnexpectedToken):
        tok = err.token
        if tok.type == "$END":
            line = getattr(tok, "line", None) or 1
            col = getattr(tok, "column", None) or 1
            span = Span(file, line, col, line, col + 1)
            what = "end of file"
        else:
            span = Span(file, tok.line, tok.column, tok.end_line or tok.line,
                        tok.end_column or tok.column + len(str(tok)))
            what = repr(str(tok))
        bare = _declaration_only(err, tok) if tok.type == "SEMICOLON" else None
        if bare is not None:
            return Diagnostic(span, f"'{bare}' is declared without a distribution or a "
                              f"value; every variable needs one: a latent needs a proper "
                              f"prior ({bare} ~ Normal(0.0, 10.0), say), because an "
                              "improper (flat) prior cannot be simulated and inference "
                              "compilation trains on simulations; data is an arg "
                              f"(arg real {bare};) or observed (observe {bare} ~ ...)")
        typo = _unknown_type(err, tok) if tok.type == "NAME" else None
        if typo is not None:
            word, col = typo
            return Diagnostic(Span(file, tok.line, col, tok.line, col + len(word)),
                              _type_message(word))
        exp = _expected_words(err.expected)
        msg = f"unexpected {what}" + (f"; expected {exp}" if exp else "")
        if "SEMICOLON" in err.expected and tok.type != "SEMICOLON":
            msg += " (is a ';' missing at the end of the previous statement?)"
        return Diagnostic(span, msg)
    if isinstance(err, lark.exceptions.UnexpectedEOF):
        return Diagnostic(None, "unexpected end of file")
    return Diagnostic(None, f"syntax error: {err}")


def parse(text: str, file: str = "<string>") -> A.Program:
    """Parse ``text`` into an AST; raise CompileError on a syntax error."""
    parser = lark_parser()
    try:
        with _PARSE_LOCK:   # the inlined transformer carries the file name
            parser.options.transformer.file = file
            name, name_span, body = parser.parse(text)
    except lark.exceptions.UnexpectedInput as err:
        err._text = text
        if isinstance(err, lark.exceptions.UnexpectedToken) and err.token.type == "$END":
            lines = text.rstrip().splitlines() or [""]
            err.token.line, err.token.column = len(lines), len(lines[-1]) + 1
        raise CompileError([_syntax_diagnostic(err, file)], text) from None
    except lark.exceptions.LarkError as err:  # pragma: no cover - defensive
        raise CompileError([Diagnostic(None, f"syntax error: {err}")], text) from None
    except RecursionError:  # pragma: no cover - the LALR parser itself is iterative
        raise CompileError([Diagnostic(None, "the spec is nested too deeply to parse")],
                           text) from None
    program = A.Program(name_span, name, body, text, file)
    deep = A.too_deep(program)
    if deep is not None:
        raise CompileError([Diagnostic(deep.span, f"nested too deeply: more than "
                                       f"{A.MAX_DEPTH} levels of expressions or blocks; "
                                       "split it into named parts (a = ...; b = a + ...)")],
                           text)
    return program
