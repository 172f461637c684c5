"""The ``cvae`` commands, one module each: its parser and its ``main(argv)``.

A command module imports only what its parser needs (the standard library and torch-free settings modules) and
imports the library that does the work once the arguments are parsed, so that ``cvae COMMAND --help`` and a bad
option answer at once. The work itself lives in the library (named in each module's docstring).
"""
