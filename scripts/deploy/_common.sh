# shellcheck shell=bash
# Shared by the scripts in scripts/deploy/: running or printing commands, secrets kept out of
# what is printed, templates filled in, temporary files removed. Sourced, never run.
#
# Every command goes through `run`, `capture`, `exists` or `run_stdin`:
# - with --dry-run they print the command (one line, shell-quoted, secrets as ***) on stdout
#   and run nothing; `capture` then returns a placeholder such as <registry-id>;
# - otherwise they print "+ command" on stderr and run it.

DRY_RUN=false
SECRETS=()
WORK_DIR=""
# Descriptor 3 is the script's standard output, even inside $(...): a dry run prints there.
exec 3>&1

die() {
  printf '%s: %s\n' "${0##*/}" "$*" >&2
  exit 2
}

note() {
  if $DRY_RUN; then
    printf '# %s\n' "$*" >&3
  else
    printf '%s\n' "$*" >&2
  fi
}

# Values never to be printed (passwords, URLs with passwords, tokens).
secret() {
  local value
  for value in "$@"; do
    [ -n "$value" ] && SECRETS+=("$value")
  done
  return 0
}

redact() {
  local text="$1" value
  for value in "${SECRETS[@]+"${SECRETS[@]}"}"; do
    text=${text//"$value"/***}
  done
  printf '%s\n' "$text"
}

# One line that a POSIX shell (and Python's shlex) reads back as the same words.
quote_command() {
  local word line=""
  for word in "$@"; do
    if [[ -n $word && $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      line+=" $word"
    else
      line+=" '${word//\'/\'\\\'\'}'"
    fi
  done
  printf '%s\n' "${line# }"
}

# A command as it is printed: each word with its secrets masked, then quoted (so a masked
# word reads '***', never a glob).
printable() {
  local word words=()
  for word in "$@"; do
    words+=("$(redact "$word")")
  done
  quote_command "${words[@]}"
}

show() {
  if $DRY_RUN; then
    printable "$@" >&3
  else
    printf '+ %s\n' "$(printable "$@")" >&2
  fi
}

run() {
  show "$@"
  $DRY_RUN || "$@"
}

# capture PLACEHOLDER COMMAND...: the command's output (trailing newline removed).
capture() {
  local placeholder="$1"
  shift
  show "$@"
  if $DRY_RUN; then
    printf '<%s>\n' "$placeholder"
  else
    "$@"
  fi
}

# exists COMMAND...: true when the command succeeds (its output is discarded). A dry run
# assumes nothing exists yet, so it prints what a first deployment runs.
exists() {
  show "$@"
  $DRY_RUN && return 1
  "$@" >/dev/null 2>&1
}

# run_retry ATTEMPTS DELAY COMMAND...: run, and run again after DELAY seconds while it fails.
run_retry() {
  local attempts="$1" delay="$2" n=1
  shift 2
  show "$@"
  $DRY_RUN && return 0
  until "$@"; do
    ((n < attempts)) || return 1
    note "attempt $n of $attempts failed; trying again in ${delay}s"
    sleep "$delay"
    n=$((n + 1))
  done
}

# run_stdin VALUE WHAT COMMAND...: run the command with VALUE on its standard input (a secret
# stays out of the command line); WHAT says what it is in the printed line.
run_stdin() {
  local value="$1" what="$2" line
  shift 2
  line=$(printable "$@")
  if $DRY_RUN; then
    printf '%s  # stdin: %s\n' "$line" "$what" >&3
  else
    printf '+ %s  < %s\n' "$line" "$what" >&2
    printf '%s' "$value" | "$@"
  fi
}

# The database to use: DATABASE_URL if set (CREATE_DB=false), else a server to create with
# the administrator password NEXUS_DB_PASSWORD (CREATE_DB=true, DB_PASSWORD; a placeholder
# in a dry run). Either secret is masked in everything printed.
# shellcheck disable=SC2034  # CREATE_DB and DB_PASSWORD are read by the sourcing script
database_choice() {
  CREATE_DB=true
  DB_PASSWORD=""
  if [ -n "${DATABASE_URL:-}" ]; then
    CREATE_DB=false
  else
    DB_PASSWORD=${NEXUS_DB_PASSWORD:-}
    if [ -z "$DB_PASSWORD" ]; then
      $DRY_RUN || die "set NEXUS_DB_PASSWORD (or DATABASE_URL); see --help"
      DB_PASSWORD=CHANGE-ME
    fi
    secret "$DB_PASSWORD" "$(url_encode "$DB_PASSWORD")"
  fi
  secret "${DATABASE_URL:-}"
}

# A private directory for generated files, removed on exit (they may hold secrets).
make_work_dir() {
  WORK_DIR=$(umask 077 && mktemp -d "${TMPDIR:-/tmp}/nexus-deploy.XXXXXX")
  trap 'rm -rf "$WORK_DIR"' EXIT
}

# Percent-encode a value for the user or password part of a URL.
url_encode() {
  local LC_ALL=C text="$1" out="" char i
  for ((i = 0; i < ${#text}; i++)); do
    char=${text:i:1}
    case $char in
      [A-Za-z0-9._~-]) out+=$char ;;
      *) out+=$(printf '%%%02X' "'$char") ;;
    esac
  done
  printf '%s\n' "$out"
}

# render TEMPLATE OUTPUT yaml|json NAME=VALUE...: copy TEMPLATE to OUTPUT with each {{NAME}}
# replaced by VALUE, escaped for a single-quoted YAML scalar or a JSON string. A line that
# ends in "# if-set" is left out when a field on it is empty.
render() {
  local template="$1" output="$2" kind="$3" line pair name value escaped drop
  shift 3
  : >"$output"
  while IFS= read -r line || [ -n "$line" ]; do
    drop=false
    for pair in "$@"; do
      name=${pair%%=*}
      value=${pair#*=}
      [[ $line == *"{{$name}}"* ]] || continue
      if [[ $line == *"# if-set" && -z $value ]]; then
        drop=true
      fi
      if [ "$kind" = yaml ]; then
        escaped=${value//\'/\'\'}
      else
        escaped=${value//\\/\\\\}
        escaped=${escaped//\"/\\\"}
      fi
      line=${line//"{{$name}}"/"$escaped"}
    done
    if [[ $line == *"{{"[A-Z]*"}}"* ]]; then
      die "$template: no value for a field on: $line"
    fi
    $drop || printf '%s\n' "$line" >>"$output"
  done <"$template"
}

# Print a generated file in a dry run (without its comment lines), secrets as ***.
show_file() {
  local file="$1" line
  $DRY_RUN || return 0
  printf '# --- %s\n' "${file##*/}" >&3
  while IFS= read -r line || [ -n "$line" ]; do
    [[ $line =~ ^[[:space:]]*# ]] && continue
    redact "#   $line" >&3
  done <"$file"
}

# In an option loop: `--name) need_value "$@"; NAME=$2; shift 2 ;;`
need_value() {
  [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"
}

lowercase() {
  printf '%s\n' "$1" | tr '[:upper:]' '[:lower:]'
}

# A file's content as one line of base64.
base64_file() {
  base64 <"$1" | tr -d '\n'
}

require() {
  local name="$1" value="$2" hint="$3"
  [ -n "$value" ] || die "$name is required: $hint"
}

need_tool() {
  $DRY_RUN && return 0
  command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH: $2"
}

default_tag() {
  git rev-parse --short=12 HEAD 2>/dev/null || printf 'latest\n'
}
