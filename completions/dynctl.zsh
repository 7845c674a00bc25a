#compdef dynctl
#
# zsh completion for dynctl.
# Install: copy to a directory on $fpath as _dynctl (e.g. /usr/share/zsh/vendor-completions/_dynctl),
# or source this file after compinit. Static on purpose: it never runs dynctl, so TAB is instant.
# Keys, values and tokens are the user's own, so only commands, options and files complete.

# The global options: before the command, and after any command or subcommand too.
_dynctl_global_specs=(
  '--node=[node to talk to (env DYNCTL_NODE, default 127.0.0.1:7400)]:host\:port: '
  '--timeout=[seconds to wait for the connection and each reply]:seconds: '
  '--json[machine-readable JSON on stdout]'
  '--token-file=[file holding a client or admin token (env DYNCTL_TOKEN_FILE)]:token file:_files'
  '--tls-ca=[CA file to verify the node over TLS (env DYNCTL_TLS_CA)]:CA file:_files'
)

# A command's own options and arguments, and the global options.
_dynctl_command_arguments() {
  _arguments "$@" $_dynctl_global_specs
}

_dynctl() {
  local curcontext=$curcontext state line ret=1
  typeset -A opt_args

  _arguments -C \
    $_dynctl_global_specs \
    '(- *)--version[print the version and exit]' \
    '(- *)'{-h,--help}'[show help and exit]' \
    '1:command:->command' \
    '*::argument:->argument' && ret=0

  case $state in
    command)
      local -a commands=(
        'get:write the value of a key to stdout as raw bytes'
        'put:store a value and print the new context token'
        'delete:delete what a context token covers'
        'bench:measure throughput and latency'
        'repair:run an anti-entropy exchange now and show its progress'
        'backup:copy the node'"'"'s store to a file while it serves'
        'log-level:change the node'"'"'s log level while it runs'
        'stats:rates, latency percentiles, errors and versions per get, per node'
        "info:the node's version, addresses, store and backlog"
        'health:exit 0 when healthy, else 7 and one line per failed check'
        'top:a live view of every member'
        'cluster:change and inspect cluster membership'
        'ring:inspect the ring and where a key lives'
        'dev:run a local development cluster'
      )
      _describe -t commands 'dynctl command' commands && ret=0
      ;;
    argument)
      curcontext=${curcontext%:*:*}:dynctl-$words[1]:
      case $words[1] in
        get)
          _dynctl_command_arguments \
            '--context[print only the context token]' \
            '--r=[replies to wait for]:count: ' \
            '--pr=[replies that must come from primaries]:count: ' \
            '(-b --bucket)'{-b+,--bucket=}'[the key'"'"'s bucket, as over HTTP]:bucket: ' \
            '(- *)'{-h,--help}'[show help and exit]' \
            '1:key: ' && ret=0
          ;;
        put)
          _dynctl_command_arguments \
            '(-f --file 2)'{-f+,--file=}'[read the value from a file]:file:_files' \
            '--context=[token from get --context: the versions this write supersedes]:token: ' \
            '--w=[stores to wait for]:count: ' \
            '--pw=[stores that must be on primaries]:count: ' \
            '(-b --bucket)'{-b+,--bucket=}'[the key'"'"'s bucket, as over HTTP]:bucket: ' \
            '--content-type=[content type stored with the value]:type: ' \
            '*--meta=[user metadata stored with the value]:NAME=VALUE: ' \
            '(- *)'{-h,--help}'[show help and exit]' \
            '1:key: ' \
            '2:value (- reads stdin): ' && ret=0
          ;;
        delete)
          _dynctl_command_arguments \
            '--context=[token from get --context: the versions to delete]:token: ' \
            '--w=[stores to wait for]:count: ' \
            '--pw=[stores that must be on primaries]:count: ' \
            '(-b --bucket)'{-b+,--bucket=}'[the key'"'"'s bucket, as over HTTP]:bucket: ' \
            '(- *)'{-h,--help}'[show help and exit]' \
            '1:key: ' && ret=0
          ;;
        bench)
          _dynctl_command_arguments \
            '--workload=[operations to run]:workload:(put get mixed insert a b c d f)' \
            '(-c --concurrency)'{-c+,--concurrency=}'[requests in flight]:count: ' \
            '--value-size=[bytes per value]:bytes: ' \
            '--seconds=[length of the timed phase]:seconds: ' \
            '--keys=[distinct keys]:count: ' \
            '--connections=[client connections]:count: ' \
            '--ops=[stop after this many operations]:count: ' \
            '--routed[send each request straight to a primary, by the ring]' \
            '(- *)'{-h,--help}'[show help and exit]' && ret=0
          ;;
        repair)
          _dynctl_command_arguments \
            '--partition=[only this partition]:partition: ' \
            '(- *)'{-h,--help}'[show help and exit]' && ret=0
          ;;
        backup)
          _dynctl_command_arguments \
            '--force[replace FILE if it exists, once the new backup is complete]' \
            '(- *)'{-h,--help}'[show help and exit]' \
            '1:backup file:_files' && ret=0
          ;;
        log-level)
          _dynctl_command_arguments \
            '(- *)'{-h,--help}'[show help and exit]' \
            '1:level:(DEBUG INFO WARNING ERROR)' && ret=0
          ;;
        stats)
          _dynctl_command_arguments \
            '--all[ask every member]' \
            '(- *)'{-h,--help}'[show help and exit]' && ret=0
          ;;
        info | top)
          _dynctl_command_arguments '(- *)'{-h,--help}'[show help and exit]' && ret=0
          ;;
        health)
          _dynctl_command_arguments \
            '--all[ask every member; one that does not answer fails]' \
            '--hints-max=[fail when a node holds more hints]:count: ' \
            '--transfers-max=[fail when a member has more transfers pending]:count: ' \
            '--disk-max-percent=[fail when a store uses more of its map]:percent: ' \
            '(- *)'{-h,--help}'[show help and exit]' && ret=0
          ;;
        cluster) _dynctl_cluster && ret=0 ;;
        ring) _dynctl_ring && ret=0 ;;
        dev) _dynctl_dev && ret=0 ;;
      esac
      ;;
  esac
  return ret
}

# The groups: a subcommand first, then its own arguments.
_dynctl_cluster() {
  local curcontext=$curcontext state line ret=1
  _arguments -C \
    '(- *)'{-h,--help}'[show help and exit]' \
    '1:cluster command:->command' \
    '*::argument:->argument' && ret=0
  case $state in
    command)
      local -a commands=(
        'join:join the cluster of a seed node'
        'leave:hand off partitions and leave'
        'remove:drop a dead member at once'
        'status:show every member'
        'transfers:list the partition transfers in flight'
      )
      _describe -t commands 'cluster command' commands && ret=0
      ;;
    argument)
      case $words[1] in
        join)
          _dynctl_command_arguments '(- *)'{-h,--help}'[show help and exit]' \
            '--dry-run[print the plan and change nothing]' \
            '1:seed (host\:port): ' && ret=0
          ;;
        leave)
          _dynctl_command_arguments '(- *)'{-h,--help}'[show help and exit]' \
            '(--wait)--dry-run[print the plan and change nothing]' \
            '(--dry-run)--wait[show progress; return once the node is safe to stop]' \
            '1::node name (default: the --node): ' && ret=0
          ;;
        remove)
          _dynctl_command_arguments '(- *)'{-h,--help}'[show help and exit]' \
            '--dry-run[print the plan and change nothing]' \
            '--force[remove the member even if it is alive]' \
            '1:node name: ' && ret=0
          ;;
        status | transfers) _dynctl_command_arguments '(- *)'{-h,--help}'[show help and exit]' && ret=0 ;;
      esac
      ;;
  esac
  return ret
}

_dynctl_ring() {
  local curcontext=$curcontext state line ret=1
  _arguments -C \
    '(- *)'{-h,--help}'[show help and exit]' \
    '1:ring command:->command' \
    '*::argument:->argument' && ret=0
  case $state in
    command)
      local -a commands=(
        'status:show Q, N, R, W and partitions per node'
        "key:show a key's partition and preference list"
      )
      _describe -t commands 'ring command' commands && ret=0
      ;;
    argument)
      case $words[1] in
        status) _dynctl_command_arguments '(- *)'{-h,--help}'[show help and exit]' && ret=0 ;;
        key) _dynctl_command_arguments '(- *)'{-h,--help}'[show help and exit]' '1:key: ' && ret=0 ;;
      esac
      ;;
  esac
  return ret
}

_dynctl_dev() {
  local curcontext=$curcontext state line ret=1
  _arguments -C \
    '(- *)'{-h,--help}'[show help and exit]' \
    '1:dev command:->command' \
    '*::argument:->argument' && ret=0
  case $state in
    command)
      local -a commands=(
        'up:start a local cluster in the foreground'
        'status:show each node: process, answers, liveness, hints'
        'start:start a stopped node again'
        'stop:stop a node (SIGTERM)'
        'kill:kill a node (SIGKILL)'
        'pause:pause a node (SIGSTOP)'
        'resume:resume a paused node (SIGCONT)'
      )
      _describe -t commands 'dev command' commands && ret=0
      ;;
    argument)
      case $words[1] in
        up)
          _dynctl_command_arguments \
            '--nodes=[how many nodes]:count: ' \
            '--dir=[directory for data and logs]:directory:_directories' \
            '--base-port=[port of the first node]:port: ' \
            '--n=[replicas per key, for a new cluster]:count: ' \
            '--r=[default read quorum, for a new cluster]:count: ' \
            '--w=[default write quorum, for a new cluster]:count: ' \
            '(- *)'{-h,--help}'[show help and exit]' && ret=0
          ;;
        status)
          _arguments \
            '--dir=[the dev cluster directory]:directory:_directories' \
            '(- *)'{-h,--help}'[show help and exit]' && ret=0
          ;;
        start | stop | kill | pause | resume)
          _arguments \
            '--dir=[the dev cluster directory]:directory:_directories' \
            '(- *)'{-h,--help}'[show help and exit]' \
            '1:node:_dynctl_dev_nodes' && ret=0
          ;;
      esac
      ;;
  esac
  return ret
}

# The node names are the dev{i} directories under --dir (default .dev).
_dynctl_dev_nodes() {
  local dir=${opt_args[--dir]:-.dev}
  local -a nodes=(${~dir}/dev*(N/:t))
  _describe -t nodes 'dev node' nodes
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _dynctl "$@"
else
  compdef _dynctl dynctl
fi
