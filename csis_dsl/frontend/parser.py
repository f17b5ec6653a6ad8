"""Lark front end: .ppl text -> AST with a span on every node (after miniwdl's _parser).

The LALR parser is built once per process and cached. Lark exceptions never escape:
they are turned into :class:`~csis_dsl.errors.CompileError` diagnostics.
"""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import lark
from lark import Lark, Token, Transformer, v_args

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


@functools.lru_cache(maxsize=1)
def lark_parser() -> Lark:
    return Lark(_grammar_text(), parser="lalr", lexer="contextual",
                propagate_positions=True, maybe_placeholders=True)


class _ToAst(Transformer):
    def __init__(self, file: str):
        super().__init__()
        self.file = file

    # spans -----------------------------------------------------------------
    def _span(self, meta) -> Span:
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tspan(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column)

    # program ---------------------------------------------------------------
    @v_args(meta=True)
    def start(self, meta, children):
        name, *body = children
        return (str(name), self._tspan(name), body)

    @v_args(meta=True)
    def arg_decl(self, meta, ch):
        typ, name, default = ch
        return A.ArgDecl(self._span(meta), typ, str(name), self._tspan(name), default)

    @v_args(meta=True)
    def sample_stmt(self, meta, ch):
        typ, target, dist = ch
        return A.Sample(self._span(meta), typ, target, dist, observed=False)

    @v_args(meta=True)
    def observe_stmt(self, meta, ch):
        typ, target, dist = ch
        return A.Sample(self._span(meta), typ, target, dist, observed=True)

    @v_args(meta=True)
    def observe_assign(self, meta, ch):
        typ, target, value = ch
        return A.Assign(self._span(meta), typ, target, value, observed=True)

    @v_args(meta=True)
    def assign_stmt(self, meta, ch):
        typ, target, value = ch
        return A.Assign(self._span(meta), typ, target, value)

    @v_args(meta=True)
    def dist(self, meta, ch):
        call, trunc = ch
        return A.Dist(self._span(meta), call, trunc)

    def truncation(self, ch):
        return (ch[0], ch[1])

    def opt_expr(self, ch):
        return ch[0]

    @v_args(meta=True)
    def for_stmt(self, meta, ch):
        var, a, b, body = ch
        start, stop = (None, a) if b is None else (a, b)
        return A.For(self._span(meta), str(var), self._tspan(var), start, stop, body)

    @v_args(meta=True)
    def if_stmt(self, meta, ch):
        cond, body, *rest = ch
        branches = [(cond, body)]
        orelse = None
        for r in rest:
            if r is None:
                continue
            if r[0] == "elif":
                branches.append((r[1], r[2]))
            else:
                orelse = r[1]
        return A.If(self._span(meta), branches, orelse)

    def elif_clause(self, ch):
        return ("elif", ch[0], ch[1])

    def else_clause(self, ch):
        return ("else", ch[0])

    def block(self, ch):
        return list(ch)

    # types -----------------------------------------------------------------
    @v_args(meta=True)
    def type(self, meta, ch):
        base, bounds, dims = ch
        t = A.TypeSpec(self._span(meta), str(base), dims=dims or [])
        for kind, value in bounds or []:
            setattr(t, kind, value)
        return t

    def base_type(self, ch):
        return str(ch[0])

    def bounds(self, ch):
        return list(ch)

    def bound(self, ch):
        return (str(ch[0]), ch[1])

    def bound_kind(self, ch):
        return str(ch[0])

    def dims(self, ch):
        return list(ch)

    # expressions -------------------------------------------------------------
    @v_args(meta=True)
    def number(self, meta, ch):
        text = str(ch[0])
        is_int = not any(c in text for c in ".eE")
        return A.Num(self._span(meta), float(text), is_int)

    @v_args(meta=True)
    def true(self, meta, ch):
        return A.Bool(self._span(meta), True)

    @v_args(meta=True)
    def false(self, meta, ch):
        return A.Bool(self._span(meta), False)

    @v_args(meta=True)
    def name(self, meta, ch):
        return A.Name(self._span(meta), str(ch[0]))

    @v_args(meta=True)
    def call(self, meta, ch):
        func, *args = ch
        args = [a for a in args if a is not None]
        return A.Call(self._span(meta), str(func), self._tspan(func), args)

    @v_args(meta=True)
    def vector(self, meta, ch):
        return A.Vector(self._span(meta), [c for c in ch if c is not None])

    @v_args(meta=True)
    def index(self, meta, ch):
        return A.Index(self._span(meta), ch[0], list(ch[1:]))

    @v_args(meta=True)
    def neg(self, meta, ch):
        operand = ch[0]
        if isinstance(operand, A.Num):   # fold literals: -1.5 is a number
            return A.Num(self._span(meta), -operand.value, operand.is_int)
        return A.Unary(self._span(meta), "-", operand)

    @v_args(meta=True)
    def not_(self, meta, ch):
        return A.Unary(self._span(meta), "not", ch[0])

    @v_args(meta=True)
    def binop(self, meta, ch):
        left, op, right = ch
        return A.Binary(self._span(meta), str(op), left, right)

    @v_args(meta=True)
    def compare(self, meta, ch):
        left, op, right = ch
        return A.Binary(self._span(meta), str(op), left, right)

    @v_args(meta=True)
    def and_(self, meta, ch):
        return A.Binary(self._span(meta), "and", ch[0], ch[1])

    @v_args(meta=True)
    def or_(self, meta, ch):
        return A.Binary(self._span(meta), "or", ch[0], ch[1])

    @v_args(meta=True)
    def cond(self, meta, ch):
        return A.Cond(self._span(meta), ch[0], ch[1], ch[2])

    def comp_op(self, ch):
        return str(ch[0])

    add_op = mul_op = pow_op = comp_op


def _expected_words(expected) -> str:
    words = sorted({_TOKEN_WORDS.get(e, repr(e.lower()) if e.isupper() else e)
                    for e in expected if not e.startswith("__ANON")})
    if len(words) > 6:
        words = words[:6] + ["..."]
    return ", ".join(words)


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
    try:
        tree = lark_parser().parse(text)
    except lark.exceptions.UnexpectedInput as err:
        if isinstance(err, lark.exceptions.UnexpectedToken) and err.token.type == "$END":
            lines = text.rstrip().splitlines() or [""]
            err.token.line, err.token.column = len(lines), len(lines[-1]) + 1
        raise CompileError([_syntax_diagnostic(err, file)], text) from None
    except lark.exceptions.LarkError as err:  # pragma: no cover - defensive
        raise CompileError([Diagnostic(None, f"syntax error: {err}")], text) from None
    try:
        name, name_span, body = _ToAst(file).transform(tree)
    except lark.exceptions.VisitError as err:  # pragma: no cover - defensive
        raise CompileError([Diagnostic(None, f"internal parser error: {err.orig_exc}")],
                           text) from None
    return A.Program(name_span, name, body, text, file)
