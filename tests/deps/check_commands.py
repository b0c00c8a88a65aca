#!/usr/bin/python3
"""Every external command the scripts, tests and benchmarks run comes from a
package scripts/install-deps installs (or from an Essential package, which
every Debian system has, minbase included).

  tests/deps/check_commands.py           check (the ctest deps.commands)
  tests/deps/check_commands.py --list    print each command found, and where

Reads the table `scripts/install-deps --commands` prints (command, Debian
package), then
  1. finds the commands the tree runs: command words of the shell scripts
     (scripts/, tests/e2e/*.sh, .ci/, the Python in their here-documents),
     argv lists given to subprocess and friends and shutil.which() in the
     Python (bench/, tests/e2e/*.py), COMMAND of add_test in CMake, and each
     script's interpreter; every one must be in the table;
  2. checks each table entry's package is one install-deps installs (or is
     Essential), and, when the command is installed, that dpkg says that
     package owns it (dpkg -S); a command not installed fails, naming the
     package that provides it.
A failure names the command, the file and line that runs it, and what to do.
The scan is static and heuristic: it sees command words, not commands built
at run time from variables ("$EBS", "$PY": the project's own binaries).
"""
import ast
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHELL_FILES_UNDER = ["scripts", "tests/e2e", ".ci"]
PYTHON_FILES_UNDER = ["bench", "tests/e2e", "tests/deps"]

# Bash builtins and keywords: no package provides them.
BUILTINS = set("""
. : [ [[ ]] { } ! alias bg bind break builtin caller case cd command compgen complete continue declare dirs
disown do done echo elif else enable esac eval exec exit export false fc fg fi for function getopts hash help
history if in jobs kill let local logout mapfile popd printf pushd pwd read readarray readonly return select
set shift shopt source suspend test then time times trap true type typeset ulimit umask unalias unset until
wait while coproc
""".split())
# Words after which the next word is again a command (their own options are
# skipped up to the first word that is not an option or a number).
PREFIXES = {"exec", "command", "nice", "sudo", "$SUDO", "env", "time", "timeout", "nohup", "setsid", "xargs",
            "taskset", "stdbuf", "!", "if", "then", "do", "else", "elif", "while", "until", "{", "builtin"}
# Options of the prefixes that take a value (`taskset -c 0`, `nice -n 10`).
PREFIX_OPTS_WITH_VALUE = {"-c", "-n", "-s", "-k", "-I", "-P", "-n1"}
# Shell functions that take a command line as a string argument.
STRING_COMMANDS = {"on_exit", "eval", "trap"}
SEPARATORS = {";", "&", "&&", "||", "|", "|&", "(", "$(", "`", "\n", ";;"}
SUBPROCESS_CALLS = {"run", "Popen", "check_output", "check_call", "call", "run_measured", "Server", "version",
                    "posix_spawnp", "execvp"}


def read_table():
    """({command: (package, optional)}, {package}) from scripts/install-deps."""
    def install_deps(flag):
        return subprocess.run([os.path.join(ROOT, "scripts", "install-deps"), flag], capture_output=True,
                              text=True, check=True).stdout
    table = {}
    for line in install_deps("--commands").splitlines():
        words = line.split()
        if words:
            table[words[0]] = (words[1], words[2:] == ["optional"])
    return table, set(install_deps("--packages").split())


def files_under(dirs, want):
    for d in dirs:
        top = os.path.join(ROOT, d)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [n for n in dirnames if n != "__pycache__"]
            for n in sorted(filenames):
                path = os.path.join(dirpath, n)
                if want(path):
                    yield path


def interpreter(path):
    try:
        with open(path, "rb") as f:
            first = f.readline().decode(errors="replace")
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    words = first[2:].split()
    return words


def is_shell(path):
    if path.endswith(".sh"):
        return True
    words = interpreter(path)
    return bool(words) and os.path.basename(words[-1]) in ("bash", "sh")


def is_python(path):
    if path.endswith(".py"):
        return True
    words = interpreter(path)
    return bool(words) and os.path.basename(words[-1]).startswith("python")


# ---- shell ------------------------------------------------------------------

def shell_tokens(text):
    """Words and operators of a shell script, with line numbers. Quoted text
    is kept inside its word (quotes removed); a command substitution $(...)
    or `...` inside double quotes is tokenized too, its words marked as
    starting a command. Comments are dropped. Returns [(token, line, kind)]
    with kind "word" or "op"."""
    toks = []
    i, n, line = 0, len(text), 1
    word, word_line, word_quoted = [], 1, False

    def flush():
        nonlocal word, word_quoted
        if word:
            toks.append(("".join(word), word_line, "qword" if word_quoted else "word"))
        word, word_quoted = [], False

    def start_word():
        nonlocal word_line
        if not word:
            word_line = line

    while i < n:
        c = text[i]
        if c == "\n":
            flush()
            toks.append(("\n", line, "op"))
            line += 1
            i += 1
        elif c in " \t":
            flush()
            i += 1
        elif c == "\\" and i + 1 < n:
            if text[i + 1] == "\n":
                line += 1
            else:
                start_word()
                word.append(text[i + 1])
            i += 2
        elif c == "#" and not word:
            while i < n and text[i] != "\n":
                i += 1
        elif c == "'":
            start_word()
            word_quoted = True
            j = text.find("'", i + 1)
            j = n if j < 0 else j
            word.append(text[i + 1:j])
            line += text.count("\n", i, j)
            i = j + 1
        elif c == '"':
            start_word()
            word_quoted = True
            j = i + 1
            while j < n and text[j] != '"':
                if text[j] == "\\":
                    j += 2
                    continue
                if text.startswith("$(", j) and not text.startswith("$((", j):
                    depth, k = 1, j + 2
                    while k < n and depth:
                        depth += {"(": 1, ")": -1}.get(text[k], 0)
                        k += 1
                    inner = shell_tokens(text[j + 2:k - 1])
                    base = line + text.count("\n", i, j)
                    toks.append(("$(", base, "op"))
                    toks.extend((t, ln + base - 1, kind) for t, ln, kind in inner)
                    toks.append((")", base, "op"))
                    word.append("$(...)")
                    j = k
                    continue
                j += 1
            word.append(text[i + 1:j])
            line += text.count("\n", i, j)
            i = j + 1
        elif text.startswith("$((", i) or text.startswith("((", i) and not word:
            depth, k = 0, i
            while k < n:
                if text[k] == "(":
                    depth += 1
                elif text[k] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            start_word()
            word.append("$((...))")
            line += text.count("\n", i, k)
            i = k + 1
        elif text.startswith("$(", i) or text.startswith("<(", i) or text.startswith(">(", i):
            flush()
            toks.append(("$(", line, "op"))
            i += 2
        elif c == "$" and i + 1 < n and text[i + 1] == "{":
            start_word()
            k = text.find("}", i)
            k = n if k < 0 else k
            word.append(text[i:k + 1])
            i = k + 1
        elif c == "`":
            flush()
            toks.append(("`", line, "op"))
            i += 1
        elif c == "(" and word and word[-1].endswith("="):
            # NAME=(a b c): an array's values, not a subshell.
            depth, k = 0, i
            while k < n:
                if text[k] == "(":
                    depth += 1
                elif text[k] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                elif text[k] in "'\"":
                    q = text.find(text[k], k + 1)
                    k = n if q < 0 else q
                elif text[k] == "#" and text[k - 1] in " \t\n":
                    q = text.find("\n", k)
                    k = n if q < 0 else q
                k += 1
            word.append("(...)")
            line += text.count("\n", i, k)
            i = k + 1
        elif c in "|&;()":
            flush()
            two = text[i:i + 2]
            if two in ("&&", "||", ";;", "|&"):
                toks.append((two, line, "op"))
                i += 2
            elif c == "&" and text.startswith(">", i + 1):  # &>file
                i += 2
            else:
                toks.append((c, line, "op"))
                i += 1
        elif c in "<>":
            # A redirection: the operator and its target are not command words.
            flush()
            m = re.match(r"\d*(<<<|<<-?|>>|>&|<&|>|<)&?-?", text[i:])
            i += m.end() if m else 1
            while i < n and text[i] in " \t":
                i += 1
            toks.append(("<redir>", line, "op"))
        else:
            if c.isdigit() and not word and re.match(r"\d+[<>]", text[i:]):
                i += 1
                continue
            start_word()
            word.append(c)
            i += 1
    flush()
    return toks


HEREDOC = re.compile(r"(?<![<\d])<<-?\s*(['\"]?)([A-Za-z_]\w*)\1")


def split_heredocs(text):
    """The script with here-document bodies blanked (their lines kept, so
    line numbers hold), and the bodies: [(first line, command line, body)]."""
    lines = text.split("\n")
    out, bodies, i = [], [], 0
    while i < len(lines):
        out.append(lines[i])
        m = HEREDOC.search(lines[i]) if "<<<" not in lines[i] else None
        if m:
            delim, start, body = m.group(2), i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != delim:
                body.append(lines[i])
                out.append("")
                i += 1
            if i < len(lines):
                out.append("")
            bodies.append((start + 1, lines[start - 1], "\n".join(body)))
        i += 1
    return "\n".join(out), bodies


def shell_commands(text, path, first_line=1):
    """[(command, line)] of one shell script, and the functions it defines."""
    script, bodies = split_heredocs(text)
    toks = shell_tokens(script)
    found, functions = [], set()
    at_start, skip_words, prefix, parens = True, False, None, 0
    case_depth, case_word, in_pattern = 0, False, False
    for idx, (tok, line, kind) in enumerate(toks):
        nxt = toks[idx + 1][0] if idx + 1 < len(toks) else None
        prev = toks[idx - 1] if idx else ("\n", 0, "op")
        if in_pattern:  # a case pattern: words up to the ")" are not commands
            if tok == "esac" and kind == "word":
                in_pattern, case_depth = False, case_depth - 1
            elif tok == ")":
                in_pattern, at_start, prefix = False, True, None
            continue
        if kind == "op":
            if tok == "<redir>":
                continue  # the next word is its target
            if tok == ";;" and case_depth:
                in_pattern = True
                continue
            if tok == "(":
                parens += 1
            if tok == ")":
                parens = max(parens - 1, 0)
            if tok in SEPARATORS:
                at_start, skip_words, prefix = True, False, None
            elif tok == ")":
                at_start, skip_words, prefix = False, False, None
            continue
        if prev[0] == "<redir>":
            continue
        if case_word:
            if tok == "in":
                case_word, in_pattern = False, True
            continue
        if tok == "case" and at_start:
            case_depth, case_word = case_depth + 1, True
            continue
        if tok == "esac":
            case_depth -= 1
            continue
        if tok in ("for", "select") and at_start:
            skip_words = True
            continue
        if nxt == "(" and idx + 2 < len(toks) and toks[idx + 2][0] == ")":
            functions.add(tok)
            continue
        if skip_words or not at_start:
            if prev[0] in STRING_COMMANDS or (prev[0] == "-c" and idx >= 2 and toks[idx - 2][0] in ("bash", "sh")):
                inner, _ = shell_commands(tok, path)
                found.extend((c, line) for c, _ in inner)
            continue
        if re.match(r"^[A-Za-z_][A-Za-z_0-9]*(\[[^]]*\])?\+?=", tok):
            continue  # VAR=value before a command
        if prefix is not None and tok.startswith("-"):
            continue
        if prefix in ("timeout", "taskset", "nice") and re.fullmatch(r"[\d.,x-]+[smhd]?|\$\S*", tok):
            continue
        if tok in PREFIXES or tok in ("[", "[["):
            if tok not in ("[", "[[", "if", "then", "do", "else", "elif", "while", "until", "{", "!", "builtin",
                           "command", "exec", "time"):
                found.append((tok, line))
            if tok in ("[", "[["):
                at_start = False
            prefix = tok
            continue
        if tok in ("}", "fi", "done", "function"):
            continue
        at_start, prefix = False, None
        found.append((tok, line))
    for start, cmdline, body in bodies:
        inner = shell_tokens(cmdline)
        words = [t for t, _, k in inner if k != "op"]
        if words and (os.path.basename(words[0]).startswith("python") or words[0] in ('$PY', "${PY}")):
            for c, ln in python_commands(body, path):
                found.append((c, ln + start - 1))
    found = [(c, ln + first_line - 1) for c, ln in found]
    return found, functions


# ---- python -----------------------------------------------------------------

def python_commands(text, path):
    """[(command, line)]: argv lists given to subprocess.run/Popen/... (and
    this project's wrappers: run_measured, Server), directly or through a
    name assigned in the same function; shutil.which("x") and
    `for x in ("a", "b"): shutil.which(x)`; the values of TOOL_VERSION."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        sys.exit(f"check_commands: {path}: cannot parse: {e}")
    found = []

    def first_strs(node, assigned):
        """The strings an argv expression can start with."""
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return first_strs(node.left, assigned)
        if isinstance(node, ast.IfExp):
            return first_strs(node.body, assigned) + first_strs(node.orelse, assigned)
        if isinstance(node, ast.Name):
            return [s for v in assigned.get(node.id, []) for s in first_strs(v, assigned)]
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            out = []
            for e in node.elts:
                if isinstance(e, ast.Constant) and isinstance(e.value, str):
                    return out + [e.value]
                if not isinstance(e, ast.Starred):
                    return out  # a variable: the project's binary, sys.executable
                out += first_strs(e.value, assigned)  # [*pin, ebs, ...]: pin may be empty
            return out
        return []

    def name_of(func):
        return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None

    def walk_scope(root):
        """The nodes of one function (or of the module) without those of the
        functions defined in it: a name is resolved where it is assigned."""
        todo = [root]
        while todo:
            node = todo.pop()
            yield node
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    todo.append(child)

    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module))]
    for scope in scopes:
        assigned, loops = {}, {}
        for n in walk_scope(scope):
            if isinstance(n, ast.Assign):
                for t in n.targets:
                    if isinstance(t, ast.Name):
                        assigned.setdefault(t.id, []).append(n.value)
            if isinstance(n, ast.For) and isinstance(n.target, ast.Name) and isinstance(n.iter, (ast.Tuple, ast.List)):
                loops[n.target.id] = [e.value for e in n.iter.elts if isinstance(e, ast.Constant)]
        for n in walk_scope(scope):
            if isinstance(n, ast.Call):
                fname = name_of(n.func)
                if fname == "which" and n.args:
                    a = n.args[0]
                    if isinstance(a, ast.Constant) and isinstance(a.value, str):
                        found.append((a.value, n.lineno))
                    elif isinstance(a, ast.Name) and a.id in loops:
                        found.extend((v, n.lineno) for v in loops[a.id])
                elif fname in SUBPROCESS_CALLS and n.args:
                    a = n.args[1] if fname == "Server" and len(n.args) > 1 else n.args[0]
                    if fname in ("posix_spawnp", "execvp") and isinstance(a, ast.Constant):
                        found.append((a.value, n.lineno))
                    if fname == "run" and not (isinstance(n.func, ast.Attribute) and name_of(n.func.value) ==
                                               "subprocess"):
                        continue  # a suite's own run(args)
                    found.extend((s, n.lineno) for s in first_strs(a, assigned))
            if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "TOOL_VERSION"
                                                 for t in n.targets) and isinstance(n.value, ast.Dict):
                for v in n.value.values:
                    found.extend((s, v.lineno) for s in first_strs(v, {}))
    # The same argv can be seen from two scopes (module and function).
    return sorted(set(found), key=lambda x: x[1])


# ---- cmake ------------------------------------------------------------------

def cmake_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "build"))]
        if "CMakeLists.txt" in filenames:
            yield os.path.join(dirpath, "CMakeLists.txt")


def cmake_targets():
    """The executables the build makes: add_test COMMAND names them."""
    names = set()
    for p in cmake_files():
        with open(p) as f:
            names |= set(re.findall(r"add_executable\s*\(\s*([\w${}-]+)", f.read()))
    return names


def is_target(name, targets):
    """Whether name is one of the build's executables (add_executable in a
    foreach names them ${target}_fuzzer)."""
    for t in targets:
        pattern = re.sub(r"\\\$\\\{\w+\\\}", lambda _: r"[\w-]+", re.escape(t))
        if re.fullmatch(pattern, name):
            return True
    return False


def cmake_commands(text):
    found = []
    for m in re.finditer(r"add_test\s*\(\s*NAME\s+\S+\s+COMMAND\s+(\S+)", text):
        found.append((m.group(1), text.count("\n", 0, m.start()) + 1))
    return found


# ---- the check --------------------------------------------------------------

def scan():
    """{command: [(file, line)]} of every external command found."""
    runs = {}
    shell_paths = sorted(set(files_under(SHELL_FILES_UNDER, is_shell)))
    python_paths = sorted(set(files_under(PYTHON_FILES_UNDER, is_python)) | {os.path.join(ROOT, "bench", "run")})
    functions = set()
    per_file = []
    for p in shell_paths:
        with open(p, errors="replace") as f:
            cmds, fns = shell_commands(f.read(), p)
        functions |= fns
        per_file.append((p, cmds))
    for p in python_paths:
        with open(p, errors="replace") as f:
            per_file.append((p, python_commands(f.read(), p)))
    for p in cmake_files():
        with open(p) as f:
            per_file.append((p, cmake_commands(f.read())))
    targets = cmake_targets()
    for p in shell_paths + python_paths:
        words = interpreter(p)
        if words:
            per_file.append((p, [(w, 1) for w in words[:2] if not w.startswith("-")]))
    for p, cmds in per_file:
        rel = os.path.relpath(p, ROOT)
        for c, line in cmds:
            c = c.strip()
            if not c or c in BUILTINS or c in functions:
                continue
            if "$" in c or "{" in c or c.startswith((".", "~")):
                continue  # a variable ("$EBS", "${PY}"), or a path relative to here
            if "/" in c:
                if os.path.isabs(c):
                    c = os.path.basename(c)  # /usr/bin/python3
                else:
                    continue  # scripts/build, bench/run: the tree's own
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", c):
                continue
            if c == "ebs" or is_target(c, targets):
                continue  # the project's own binaries
            runs.setdefault(c, []).append((rel, line))
    return runs


def command_paths(cmd):
    """(path, [paths dpkg may know it by]) for a command: its Debian location
    first (a PATH may put pyenv's python3 first; the scripts run
    /usr/bin/python3), else the first on PATH; (None, []) if not installed."""
    path = next((p for p in (f"/usr/bin/{cmd}", f"/usr/sbin/{cmd}", f"/bin/{cmd}", f"/sbin/{cmd}")
                 if os.access(p, os.X_OK)), None) or shutil.which(cmd)
    if not path:
        return None, []
    candidates = [path, os.path.realpath(path)]  # a symlink's package, else the target's (alternatives)
    # usrmerge: dpkg may know /bin/x for /usr/bin/x, and the other way round.
    for p in list(candidates):
        if p.startswith(("/usr/bin/", "/usr/sbin/")):
            candidates.append(p[4:])
        elif p.startswith(("/bin/", "/sbin/")):
            candidates.append("/usr" + p)
    return path, candidates


def dpkg_owners(paths):
    """{path: [packages]} for the paths dpkg knows, in one dpkg -S (each call
    reads the whole file database: one per path takes a minute)."""
    out = subprocess.run(["dpkg", "-S", *sorted(set(paths))], capture_output=True, text=True)
    owners = {}
    for line in out.stdout.splitlines():
        pkgs, _, file = line.partition(": ")
        if not pkgs.startswith("diversion by"):
            owners.setdefault(file.strip(), []).extend(x.strip().split(":")[0] for x in pkgs.split(","))
    return owners


def always_there(pkg):
    """Essential or Priority required: every Debian system has it (a
    debootstrap minbase installs exactly these, and apt)."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Essential} ${Priority}", pkg], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.split()[:2] in (["yes", "required"], ["no", "required"],
                                                             ["yes", "important"])


def direct_dependencies(packages):
    """The packages the given ones depend on directly (installed with them)."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Depends}, ${Pre-Depends}\n", *sorted(packages)],
                         capture_output=True, text=True)
    deps = set()
    for line in out.stdout.splitlines():
        for alt in line.split(","):
            name = alt.split("|")[0].strip().split(" ")[0].split(":")[0]
            if name:
                deps.add(name)
    return deps


def main():
    runs = scan()
    if "--list" in sys.argv:
        for c in sorted(runs):
            where = ", ".join(f"{f}:{ln}" for f, ln in runs[c][:3]) + (" ..." if len(runs[c]) > 3 else "")
            print(f"{c:16} {where}")
        return
    table, packages = read_table()
    errors = []
    for c in sorted(runs):
        if c not in table:
            f, ln = runs[c][0]
            errors.append(f"{c}: run at {f}:{ln}, but scripts/install-deps does not list it: add \"{c} PACKAGE\" "
                          f"to its COMMANDS (the Debian package that provides it: dpkg -S $(command -v {c})) and "
                          f"PACKAGE to PACKAGES")
    if shutil.which("dpkg") is None:
        errors.append("dpkg not found: this check runs on Debian")
        table = {}
    deps = direct_dependencies(packages) if table else set()
    located = {c: command_paths(c) for c in table}
    known = dpkg_owners(p for _, candidates in located.values() for p in candidates) if table else {}
    for c in sorted(table):
        pkg, optional = table[c]
        where = "{}:{}".format(*runs[c][0]) if c in runs else "indirectly (listed in install-deps)"
        if not optional and pkg not in packages and pkg not in deps and not always_there(pkg):
            errors.append(f"{c} (run at {where}) comes from {pkg}, which scripts/install-deps does not install "
                          f"(nor any package it installs depends on it, nor is it Essential): add {pkg} to PACKAGES")
        path, candidates = located[c]
        owners = next((known[p] for p in candidates if p in known), [])
        if path is None:
            if not optional:
                errors.append(f"{c} (run at {where}) is not installed: scripts/install-deps installs it "
                              f"(package {pkg})")
        elif not owners:
            errors.append(f"{c}: {path} belongs to no Debian package (dpkg -S finds none; installed by hand?); "
                          f"install-deps says it comes from {pkg}")
        elif pkg not in owners:
            errors.append(f"{c}: {path} belongs to {', '.join(owners)}, but scripts/install-deps says {pkg}: "
                          f"fix its COMMANDS")
    unused = sorted(set(table) - set(runs))
    print(f"check_commands: {len(runs)} external commands found in the tree, {len(table)} in install-deps"
          + (f" (listed but not found by the scan, run indirectly: {' '.join(unused)})" if unused else ""))
    if errors:
        for e in errors:
            print("FAIL: " + e, file=sys.stderr)
        sys.exit(1)
    print("ok: every command the scripts, tests and benchmarks run comes from a package install-deps installs")


if __name__ == "__main__":
    main()
