#compdef dynctl
#
# zsh completion for dynctl.
# Install: copy to a directory on $fpath as _dynctl (e.g. /usr/share/zsh/vendor-completions/_dynctl),
# or source this file after compinit. Static on purpose: it never runs dynctl, so TAB is instant.
# Keys, values and tokens are the user's own, so only commands, options and files complete.

_dynctl() {
  local curcontext=$curcontext state line ret=1
  typeset -A opt_args

  _arguments -C \
    '--node=[node to talk to (env DYNCTL_NODE, default 127.0.0.1:7400)]:host\:port: ' \
    '--timeout=[seconds to wait for the connection and each reply]:seconds: ' \
    '--json[machine-readable JSON on stdout]' \
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
      )
      _describe -t commands 'dynctl command' commands && ret=0
      ;;
    argument)
      curcontext=${curcontext%:*:*}:dynctl-$words[1]:
      case $words[1] in
        get)
          _arguments \
            '--context[print only the context token]' \
            '--r=[replies to wait for]:count: ' \
            '(- *)'{-h,--help}'[show help and exit]' \
            '1:key: ' && ret=0
          ;;
        put)
          _arguments \
            '(-f --file 2)'{-f+,--file=}'[read the value from a file]:file:_files' \
            '--context=[token from get --context: the versions this write supersedes]:token: ' \
            '--w=[stores to wait for]:count: ' \
            '(- *)'{-h,--help}'[show help and exit]' \
            '1:key: ' \
            '2:value (- reads stdin): ' && ret=0
          ;;
        delete)
          _arguments \
            '--context=[token from get --context: the versions to delete]:token: ' \
            '--w=[stores to wait for]:count: ' \
            '(- *)'{-h,--help}'[show help and exit]' \
            '1:key: ' && ret=0
          ;;
        bench)
          _arguments \
            '--workload=[operations to run]:workload:(put get mixed)' \
            '(-c --concurrency)'{-c+,--concurrency=}'[requests in flight]:count: ' \
            '--value-size=[bytes per value]:bytes: ' \
            '--seconds=[length of the timed phase]:seconds: ' \
            '--keys=[distinct keys]:count: ' \
            '--connections=[client connections]:count: ' \
            '--ops=[stop after this many operations]:count: ' \
            '(- *)'{-h,--help}'[show help and exit]' && ret=0
          ;;
      esac
      ;;
  esac
  return ret
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _dynctl "$@"
else
  compdef _dynctl dynctl
fi
