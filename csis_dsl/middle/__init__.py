"""The middle: the plan of execution and the dependency graph, both made from the checked program."""
