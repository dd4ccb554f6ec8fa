// Renders an Ollama TEMPLATE the way Ollama's chat endpoint does, for tests/test_modelfile.py.
//
// stdin: {"template": "...", "system": "<the Modelfile's SYSTEM or empty>", "messages": [{"role", "content"}]}
// stdout: the prompt text.
//
// What Ollama does, as read in its server and template packages: the Modelfile's SYSTEM becomes a
// first system message when the request has none; consecutive messages of one role are joined by a
// blank line; the template gets every message (system ones included) as .Messages and the system
// texts joined as .System; missing keys render as zero values.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type request struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Messages []message `json:"messages"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		panic(err)
	}
	msgs := req.Messages
	if req.System != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
		msgs = append([]message{{Role: "system", Content: req.System}}, msgs...)
	}
	var systems []string
	var joined []*message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			systems = append(systems, m.Content)
		}
		if n := len(joined); n > 0 && joined[n-1].Role == m.Role {
			joined[n-1].Content += "\n\n" + m.Content
			continue
		}
		joined = append(joined, &m)
	}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(req.Template))
	values := map[string]any{"System": strings.Join(systems, "\n\n"), "Messages": joined, "Response": ""}
	if err := tmpl.Execute(os.Stdout, values); err != nil {
		panic(err)
	}
}
