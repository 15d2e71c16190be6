package redact

import "testing"

func TestURL(t *testing.T) {
	for raw, want := range map[string]string{
		"http://user:Pa55@hooks.example/loc?key=K3y#frag": "http://hooks.example/loc?…",
		"https://token@hooks.example/a%2Fb":               "https://hooks.example/a%2Fb",
		"redis://:R3dis@10.0.0.5:6379/0":                  "redis://10.0.0.5:6379/0",
		"http://hooks.example/loc?":                       "http://hooks.example/loc?…",
		"redis//:R3dis@10.0.0.5:6379/0":                   "", // no scheme: the password would read as a path
		"mailto:someone@example.com":                      "",
		"http://hooks.example/\n?key=K3y":                 "",
		"":                                                "",
	} {
		if got := URL(raw); got != want {
			t.Errorf("URL(%q) = %q, want %q", raw, got, want)
		}
	}
}
