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

    # The global options come before the command or after it (and after a group's subcommand).
    local late_options="--node --timeout --json --token-file --tls-ca"
    local global_options="$late_options --version --help -h"
    local commands="get put delete bench repair backup stats info health top log-level cluster ring dev"
    local command="" subcommand="" i
    for ((i = 1; i < ${#words[@]}; i++)); do
        case ${words[i]} in
            --node | --timeout | --token-file | --tls-ca) ((i++)) ;;
            -*) ;;
            *) command=${words[i]}; break ;;
        esac
    done
    # cluster, ring and dev are groups: their first word is a subcommand (a global option may come first).
    for ((i++; i < ${#words[@]}; i++)); do
        case ${words[i]} in
            --node | --timeout | --token-file | --tls-ca) ((i++)) ;;
            -*) ;;
            *) subcommand=${words[i]}; break ;;
        esac
    done

    case $prev in
        --file | -f | --token-file | --tls-ca)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -f -- "$cur"))
            return
            ;;
        --dir)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -d -- "$cur"))
            return
            ;;
        --workload)
            COMPREPLY=($(compgen -W "put get mixed insert a b c d f" -- "$cur"))
            return
            ;;
        --node | --timeout | --context | --r | --w | --concurrency | -c | --value-size | --seconds | --keys | --connections | --ops | --nodes | --base-port | --n | --hints-max | --transfers-max | --disk-max-percent)
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
        get) options="--context --r --pr --bucket -b --help -h" ;;
        put) options="--file -f --context --w --pw --bucket -b --content-type --meta --help -h" ;;
        delete) options="--context --w --pw --bucket -b --help -h" ;;
        repair) options="--partition --help -h" ;;
        backup) options="--force --help -h" ;;  # FILE: files, by complete -o default
        log-level)
            [[ $cur != -* ]] && COMPREPLY=($(compgen -W "DEBUG INFO WARNING ERROR" -- "$cur")) && return
            options="--help -h"
            ;;
        stats) options="--all --help -h" ;;
        info | top) options="--help -h" ;;
        health) options="--all --hints-max --transfers-max --disk-max-percent --help -h" ;;
        bench) options="--workload --concurrency -c --value-size --seconds --keys --connections --ops --routed --help -h" ;;
        cluster | ring | dev)
            if [[ -z $subcommand ]]; then
                local subcommands
                case $command in
                    cluster) subcommands="join leave remove status transfers" ;;
                    ring) subcommands="status key" ;;
                    dev) subcommands="up status start stop kill pause resume" ;;
                esac
                COMPREPLY=($(compgen -W "$subcommands --help -h" -- "$cur"))
                return
            fi
            case "$command $subcommand" in
                "cluster join") options="--dry-run --help -h" ;;
                "cluster leave") options="--dry-run --wait --help -h" ;;
                "cluster remove") options="--dry-run --force --help -h" ;;
                "cluster status" | "cluster transfers") options="--help -h" ;;
                "ring status" | "ring key") options="--help -h" ;;
                "dev up") options="--nodes --dir --base-port --n --r --w --help -h" ;;
                "dev status") options="--dir --help -h" ;;
                "dev start" | "dev stop" | "dev kill" | "dev pause" | "dev resume")
                    options="--dir --help -h"
                    if [[ $cur != -* ]]; then
                        # The node names are the dev{i} directories under --dir (default .dev).
                        local dir=.dev j named=""
                        for ((j = i + 1; j < ${#words[@]}; j++)); do
                            case ${words[j]} in
                                --dir) dir=${words[j+1]}; ((j++)) ;;
                                -*) ;;
                                *) named=${words[j]} ;;
                            esac
                        done
                        [[ -n $named ]] && return  # one node per command
                        for ((j = 1; j < i; j++)); do
                            [[ ${words[j]} == --dir ]] && dir=${words[j+1]}
                        done
                        local -a nodes=()
                        local path
                        for path in "$dir"/dev*/; do
                            [[ -d $path ]] && path=${path%/} && nodes+=("${path##*/}")
                        done
                        COMPREPLY=($(compgen -W "${nodes[*]}" -- "$cur"))
                        return
                    fi
                    ;;
                *) return ;;
            esac
            ;;
        *) return ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$options $late_options" -- "$cur"))
    fi
}

complete -o default -F _dynctl dynctl
