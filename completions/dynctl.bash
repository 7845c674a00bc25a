# bash completion for dynctl                                  -*- shell-script -*-
#
# Install: copy to /usr/share/bash-completion/completions/dynctl (or source it from ~/.bashrc).
# Static on purpose: it never runs dynctl, so TAB is instant and never touches a node.
# Keys, values and tokens are the user's own, so only commands, options and files complete.

_dynctl() {
    # Split the line ourselves: COMP_WORDS breaks HOST:PORT at the colon.
    local line=${COMP_LINE:0:COMP_POINT}
    local -a words
    read -r -a words <<< "$line"
    local cur=""
    if [[ $line != *[[:space:]] ]]; then
        cur=${words[${#words[@]}-1]}
        unset 'words[${#words[@]}-1]'
    fi
    local prev=${words[${#words[@]}-1]}

    local global_options="--node --timeout --json --help -h"
    local commands="get put delete bench"
    local command="" i
    for ((i = 1; i < ${#words[@]}; i++)); do
        case ${words[i]} in
            --node | --timeout) ((i++)) ;;
            -*) ;;
            *) command=${words[i]}; break ;;
        esac
    done

    case $prev in
        --file | -f)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -f -- "$cur"))
            return
            ;;
        --workload)
            COMPREPLY=($(compgen -W "put get mixed" -- "$cur"))
            return
            ;;
        --node | --timeout | --context | --r | --w | --concurrency | -c | --value-size | --seconds | --keys | --connections | --ops)
            COMPREPLY=()  # a value only the user knows
            return
            ;;
    esac

    local options
    case $command in
        "")
            COMPREPLY=($(compgen -W "$commands $global_options" -- "$cur"))
            return
            ;;
        get) options="--context --r --help -h" ;;
        put) options="--file -f --context --w --help -h" ;;
        delete) options="--context --w --help -h" ;;
        bench) options="--workload --concurrency -c --value-size --seconds --keys --connections --ops --help -h" ;;
        *) return ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$options" -- "$cur"))
    fi
}

complete -o default -F _dynctl dynctl
