"""Front end: text -> parse tree (parser) -> AST (ast) -> checked, typed program (checks)."""
